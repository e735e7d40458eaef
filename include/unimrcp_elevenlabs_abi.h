/*
 * What the plugin needs from UniMRCP 1.8, by header name. build.rs runs
 * bindgen on this file with either unimrcp-shim/include (our own
 * declarations) or a real install ($UNIMRCP_DIR/include plus APR's include
 * directory) on the include path.
 */
#include <apr_tables.h>
#include <apr_strings.h>
#include "apt_log.h"
#include "mrcp_synth_engine.h"
