/* Stand-in for the header of the same name in a UniMRCP/APR install. */
#include "unimrcp_shim_abi.h"
