/* PLACEHOLDER: to be written (cfgstream.h). */
#include "cfgstream.h"
