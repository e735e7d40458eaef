/*
 * What the plugin and the test host need from UniMRCP 1.8, by header name.
 * unimrcp-sys/build.rs runs bindgen on this file once, with either
 * unimrcp-shim/include/ (our own declarations) or a real install ($UNIMRCP_DIR/include plus APR's include
 * directory) on the include path; the allow-list in build.rs picks the
 * items both crates use. The host needs nothing beyond these headers: it
 * implements the server functions declared here and builds the structures
 * declared here.
 */
#include <apr_tables.h>
#include <apr_strings.h>
#include "apt_log.h"
#include "mrcp_synth_engine.h"
