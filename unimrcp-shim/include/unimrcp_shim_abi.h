/*
 * unimrcp-elevenlabs: our own declarations of the part of the UniMRCP 1.8
 * plugin ABI that the plugin uses, written from the public API (names,
 * signatures, layouts) and the facts in unimrcp-abi-facts.md (x86_64 sizes
 * and offsets, checked by the layout tests in unimrcp-sys/src/lib.rs).
 *
 * These headers stand in for a real install: the file names that
 * include/unimrcp_elevenlabs_abi.h includes (apr_tables.h, apt_log.h,
 * mrcp_synth_engine.h, ...) all resolve to this one file. Set UNIMRCP_DIR to
 * build against a real install.
 *
 * Only what the plugin or the test host touches is declared. Structures the
 * plugin never looks inside stay opaque.
 */
#ifndef UNIMRCP_SHIM_ABI_H
#define UNIMRCP_SHIM_ABI_H

#include <stddef.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- APR --- */

typedef size_t apr_size_t;
typedef unsigned char apr_byte_t;
typedef unsigned short apr_uint16_t;
typedef unsigned int apr_uint32_t;

/* Pools and tables are opaque: only APR functions look inside. */
typedef struct apr_pool_t apr_pool_t;
typedef struct apr_table_t apr_table_t;

/* Public APR array: its fields are part of the API (apr_tables.h). */
typedef struct apr_array_header_t {
    apr_pool_t *pool;
    int elt_size;
    int nelts;
    int nalloc;
    char *elts;
} apr_array_header_t;

/* One entry of the array that apr_table_elts() returns. */
typedef struct apr_table_entry_t {
    char *key;
    char *val;
    apr_uint32_t key_checksum;
} apr_table_entry_t;

typedef struct apr_version_t {
    int major;
    int minor;
    int patch;
    int is_dev;
} apr_version_t;

void *apr_palloc(apr_pool_t *pool, apr_size_t size);
void *apr_array_push(apr_array_header_t *arr);
const char *apr_table_get(const apr_table_t *table, const char *key);
const apr_array_header_t *apr_table_elts(const apr_table_t *table);
char *apr_pstrmemdup(apr_pool_t *pool, const char *s, apr_size_t n);

/* ------------------------------------------------------- APR toolkit --- */

typedef int apt_bool_t;
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

typedef struct apt_str_t {
    char *buf;
    apr_size_t length;
} apt_str_t;

typedef struct apt_pair_t {
    apt_str_t name;
    apt_str_t value;
} apt_pair_t;

/* An APR array whose elements are apt_pair_t. */
typedef apr_array_header_t apt_pair_arr_t;

typedef struct apt_text_stream_t apt_text_stream_t;
typedef struct apt_dir_layout_t apt_dir_layout_t;
typedef struct apt_logger_t apt_logger_t;
typedef struct apt_log_source_t apt_log_source_t;

typedef enum {
    APT_PRIO_EMERGENCY,
    APT_PRIO_ALERT,
    APT_PRIO_CRITICAL,
    APT_PRIO_ERROR,
    APT_PRIO_WARNING,
    APT_PRIO_NOTICE,
    APT_PRIO_INFO,
    APT_PRIO_DEBUG,
    APT_PRIO_COUNT
} apt_log_priority_e;

/* The server's default log source (data symbol in libunimrcpserver). */
extern apt_log_source_t def_log_source;

/* Variadic; formats with APR's rules. The plugin always passes "%s". */
apt_bool_t apt_log(apt_log_source_t *log_source, const char *file, int line,
                   apt_log_priority_e priority, const char *format, ...);
apt_bool_t apt_log_instance_set(apt_logger_t *logger);
void apt_def_log_source_set(apt_log_source_t *log_source);
apt_bool_t apt_log_source_assign(const char *name, apt_log_source_t **log_source);

typedef struct apt_header_field_t apt_header_field_t;

/* The field ring is a pair of pointers (APR_RING_HEAD). Rust code never
 * names this type: a real install spells the ring with APR_RING_ENTRY and
 * APR_RING_HEAD, whose struct names are not ours. */
typedef struct apt_header_ring_t {
    apt_header_field_t *next;
    apt_header_field_t *prev;
} apt_header_ring_t;

struct apt_header_field_t {
    apt_header_ring_t link;
    apt_str_t name;
    apt_str_t value;
    apr_size_t id;
};

/* arr[id] is non-NULL when the field with that id is present. */
typedef struct apt_header_section_t {
    apt_header_ring_t ring;
    apt_header_field_t **arr;
    apr_size_t arr_size;
} apt_header_section_t;

/* ---------------------------------------------------------------- MPF --- */

typedef struct mpf_termination_t mpf_termination_t;
typedef struct mpf_codec_t mpf_codec_t;
typedef struct mpf_codec_manager_t mpf_codec_manager_t;

#define CODEC_FRAME_TIME_BASE 10
#define BYTES_PER_SAMPLE 2

typedef enum {
    MPF_SAMPLE_RATE_NONE = 0x00,
    MPF_SAMPLE_RATE_8000 = 0x01,
    MPF_SAMPLE_RATE_16000 = 0x02,
    MPF_SAMPLE_RATE_32000 = 0x04,
    MPF_SAMPLE_RATE_48000 = 0x08
} mpf_sample_rates_e;

typedef enum {
    STREAM_DIRECTION_NONE = 0x0,
    STREAM_DIRECTION_SEND = 0x1,
    STREAM_DIRECTION_RECEIVE = 0x2,
    STREAM_DIRECTION_DUPLEX = 0x3
} mpf_stream_direction_e;

typedef enum {
    MEDIA_FRAME_TYPE_NONE = 0x0,
    MEDIA_FRAME_TYPE_AUDIO = 0x1,
    MEDIA_FRAME_TYPE_VIDEO = 0x2,
    MEDIA_FRAME_TYPE_EVENT = 0x4
} mpf_frame_type_e;

typedef apt_bool_t (*mpf_codec_format_match_f)(const apt_pair_arr_t *a, const apt_pair_arr_t *b);

typedef struct mpf_codec_descriptor_t {
    apr_byte_t payload_type;
    apt_str_t name;
    apr_uint16_t sampling_rate;
    apr_uint16_t rtp_sampling_rate;
    apr_byte_t channel_count;
    apr_uint16_t frame_duration;
    apt_pair_arr_t *format_params;
    mpf_codec_format_match_f match_formats;
    apt_bool_t enabled;
} mpf_codec_descriptor_t;

typedef struct mpf_codec_attribs_t {
    apt_str_t name;
    apr_byte_t bits_per_sample;
    int sample_rates; /* mask of mpf_sample_rates_e */
    apr_uint16_t frame_duration;
} mpf_codec_attribs_t;

typedef struct mpf_codec_capabilities_t {
    apr_array_header_t *attrib_arr; /* of mpf_codec_attribs_t */
    apt_bool_t allow_named_events;
} mpf_codec_capabilities_t;

typedef struct mpf_stream_capabilities_t {
    mpf_stream_direction_e direction;
    mpf_codec_capabilities_t codecs;
} mpf_stream_capabilities_t;

typedef struct mpf_codec_frame_t {
    void *buffer;
    apr_size_t size;
} mpf_codec_frame_t;

/* RFC 4733 event: id, packed volume/edge bits, duration (4 bytes). */
typedef struct mpf_named_event_frame_t {
    apr_byte_t event_id;
    apr_byte_t volume_bits;
    apr_uint16_t duration;
} mpf_named_event_frame_t;

typedef struct mpf_frame_t {
    int type;   /* mask of mpf_frame_type_e */
    int marker;
    mpf_codec_frame_t codec_frame;
    mpf_named_event_frame_t event_frame;
} mpf_frame_t;

typedef struct mpf_audio_stream_t mpf_audio_stream_t;

typedef struct mpf_audio_stream_vtable_t {
    apt_bool_t (*destroy)(mpf_audio_stream_t *stream);
    apt_bool_t (*open_rx)(mpf_audio_stream_t *stream, mpf_codec_t *codec);
    apt_bool_t (*close_rx)(mpf_audio_stream_t *stream);
    apt_bool_t (*read_frame)(mpf_audio_stream_t *stream, mpf_frame_t *frame);
    apt_bool_t (*open_tx)(mpf_audio_stream_t *stream, mpf_codec_t *codec);
    apt_bool_t (*close_tx)(mpf_audio_stream_t *stream);
    apt_bool_t (*write_frame)(mpf_audio_stream_t *stream, const mpf_frame_t *frame);
    void (*trace)(mpf_audio_stream_t *stream, mpf_stream_direction_e direction, apt_text_stream_t *output);
} mpf_audio_stream_vtable_t;

struct mpf_audio_stream_t {
    void *obj;
    const mpf_audio_stream_vtable_t *vtable;
    mpf_termination_t *termination;
    const mpf_stream_capabilities_t *capabilities;
    mpf_stream_direction_e direction;
    mpf_codec_descriptor_t *rx_descriptor;
    mpf_codec_descriptor_t *rx_event_descriptor;
    mpf_codec_descriptor_t *tx_descriptor;
    mpf_codec_descriptor_t *tx_event_descriptor;
};

mpf_stream_capabilities_t *mpf_stream_capabilities_create(mpf_stream_direction_e directions, apr_pool_t *pool);

/* --------------------------------------------------------------- MRCP --- */

typedef enum {
    MRCP_VERSION_UNKNOWN = 0,
    MRCP_VERSION_1 = 1,
    MRCP_VERSION_2 = 2
} mrcp_version_e;

typedef enum {
    MRCP_SYNTHESIZER_RESOURCE,
    MRCP_RECOGNIZER_RESOURCE,
    MRCP_RECORDER_RESOURCE,
    MRCP_VERIFIER_RESOURCE,
    MRCP_RESOURCE_TYPE_COUNT
} mrcp_resource_type_e;

typedef apr_uint32_t mrcp_request_id;
typedef apr_size_t mrcp_method_id;
typedef apr_size_t mrcp_resource_id;

typedef struct mrcp_resource_t mrcp_resource_t;
typedef struct mrcp_state_machine_t mrcp_state_machine_t;

typedef enum {
    MRCP_REQUEST_STATE_COMPLETE,
    MRCP_REQUEST_STATE_INPROGRESS,
    MRCP_REQUEST_STATE_PENDING,
    MRCP_REQUEST_STATE_COUNT,
    MRCP_REQUEST_STATE_UNKNOWN = MRCP_REQUEST_STATE_COUNT
} mrcp_request_state_e;

typedef enum {
    MRCP_STATUS_CODE_UNKNOWN = 0,
    MRCP_STATUS_CODE_SUCCESS = 200,
    MRCP_STATUS_CODE_SUCCESS_WITH_IGNORE = 201,
    MRCP_STATUS_CODE_METHOD_NOT_ALLOWED = 401,
    MRCP_STATUS_CODE_METHOD_NOT_VALID = 402,
    MRCP_STATUS_CODE_UNSUPPORTED_PARAM = 403,
    MRCP_STATUS_CODE_ILLEGAL_PARAM_VALUE = 404,
    MRCP_STATUS_CODE_NOT_FOUND = 405,
    MRCP_STATUS_CODE_MISSING_PARAM = 406,
    MRCP_STATUS_CODE_METHOD_FAILED = 407,
    MRCP_STATUS_CODE_UNRECOGNIZED_MESSAGE = 408,
    MRCP_STATUS_CODE_UNSUPPORTED_PARAM_VALUE = 409,
    MRCP_STATUS_CODE_OUT_OF_ORDER = 410,
    MRCP_STATUS_CODE_RESOURCE_SPECIFIC_FAILURE = 421
} mrcp_status_code_e;

typedef enum {
    MRCP_MESSAGE_TYPE_UNKNOWN,
    MRCP_MESSAGE_TYPE_REQUEST,
    MRCP_MESSAGE_TYPE_RESPONSE,
    MRCP_MESSAGE_TYPE_EVENT
} mrcp_message_type_e;

typedef struct mrcp_start_line_t {
    mrcp_message_type_e message_type;
    mrcp_version_e version;
    apr_size_t length;
    mrcp_request_id request_id;
    apt_str_t method_name;
    mrcp_method_id method_id;
    mrcp_status_code_e status_code;
    mrcp_request_state_e request_state;
} mrcp_start_line_t;

typedef struct mrcp_channel_id {
    apt_str_t session_id;
    apt_str_t resource_name;
} mrcp_channel_id;

typedef struct mrcp_header_accessor_t mrcp_header_accessor_t;

/* Only allocate is called by the plugin (through the header prepare
 * helpers, which are static inline in UniMRCP). */
typedef struct mrcp_header_vtable_t {
    void *(*allocate)(mrcp_header_accessor_t *accessor, apr_pool_t *pool);
    void (*destroy)(mrcp_header_accessor_t *accessor);
    apt_bool_t (*parse_field)(mrcp_header_accessor_t *accessor, apr_size_t id, const apt_str_t *value, apr_pool_t *pool);
    apt_bool_t (*generate_field)(const mrcp_header_accessor_t *accessor, apr_size_t id, apt_str_t *value, apr_pool_t *pool);
    apt_bool_t (*duplicate_field)(mrcp_header_accessor_t *accessor, const mrcp_header_accessor_t *src, apr_size_t id, const apt_str_t *value, apr_pool_t *pool);
    const void *field_table;
    apr_size_t field_count;
} mrcp_header_vtable_t;

struct mrcp_header_accessor_t {
    void *data;
    const mrcp_header_vtable_t *vtable;
};

typedef struct mrcp_message_header_t {
    mrcp_header_accessor_t generic_header_accessor;
    mrcp_header_accessor_t resource_header_accessor;
    apt_header_section_t header_section;
} mrcp_message_header_t;

typedef struct mrcp_message_t {
    mrcp_start_line_t start_line;
    mrcp_channel_id channel_id;
    mrcp_message_header_t header;
    apt_str_t body;
    const mrcp_resource_t *resource;
    apr_pool_t *pool;
} mrcp_message_t;

mrcp_message_t *mrcp_response_create(const mrcp_message_t *request_message, apr_pool_t *pool);
mrcp_message_t *mrcp_event_create(const mrcp_message_t *request_message, mrcp_method_id event_id, apr_pool_t *pool);
apt_bool_t mrcp_generic_header_property_add(mrcp_message_t *message, apr_size_t id);
apt_bool_t mrcp_resource_header_property_add(mrcp_message_t *message, apr_size_t id);

/* Generic header: ids index header_section.arr directly. */
typedef enum {
    GENERIC_HEADER_ACTIVE_REQUEST_ID_LIST,
    GENERIC_HEADER_PROXY_SYNC_ID,
    GENERIC_HEADER_ACCEPT_CHARSET,
    GENERIC_HEADER_CONTENT_TYPE,
    GENERIC_HEADER_CONTENT_ID,
    GENERIC_HEADER_CONTENT_BASE,
    GENERIC_HEADER_CONTENT_ENCODING,
    GENERIC_HEADER_CONTENT_LOCATION,
    GENERIC_HEADER_CONTENT_LENGTH,
    GENERIC_HEADER_CACHE_CONTROL,
    GENERIC_HEADER_LOGGING_TAG,
    GENERIC_HEADER_VENDOR_SPECIFIC_PARAMS,
    GENERIC_HEADER_ACCEPT,
    GENERIC_HEADER_FETCH_TIMEOUT,
    GENERIC_HEADER_SET_COOKIE,
    GENERIC_HEADER_SET_COOKIE2,
    GENERIC_HEADER_COUNT
} mrcp_generic_header_id;

#define MAX_ACTIVE_REQUEST_ID_COUNT 5

typedef struct mrcp_request_id_list_t {
    mrcp_request_id ids[MAX_ACTIVE_REQUEST_ID_COUNT];
    apr_size_t count;
} mrcp_request_id_list_t;

typedef struct mrcp_generic_header_t {
    mrcp_request_id_list_t active_request_id_list;
    apt_str_t proxy_sync_id;
    apt_str_t accept_charset;
    apt_str_t content_type;
    apt_str_t content_id;
    apt_str_t content_base;
    apt_str_t content_encoding;
    apt_str_t content_location;
    apr_size_t content_length;
    apt_str_t cache_control;
    apt_str_t logging_tag;
    apt_pair_arr_t *vendor_specific_params;
    apt_str_t accept;
    apr_size_t fetch_timeout;
    apt_str_t set_cookie;
    apt_str_t set_cookie2;
} mrcp_generic_header_t;

/* Synthesizer resource: method, event and header ids. */
typedef enum {
    SYNTHESIZER_SET_PARAMS,
    SYNTHESIZER_GET_PARAMS,
    SYNTHESIZER_SPEAK,
    SYNTHESIZER_STOP,
    SYNTHESIZER_PAUSE,
    SYNTHESIZER_RESUME,
    SYNTHESIZER_BARGE_IN_OCCURRED,
    SYNTHESIZER_CONTROL,
    SYNTHESIZER_DEFINE_LEXICON,
    SYNTHESIZER_METHOD_COUNT
} mrcp_synthesizer_method_id;

typedef enum {
    SYNTHESIZER_SPEECH_MARKER,
    SYNTHESIZER_SPEAK_COMPLETE,
    SYNTHESIZER_EVENT_COUNT
} mrcp_synthesizer_event_id;

typedef enum {
    SYNTHESIZER_HEADER_JUMP_SIZE,
    SYNTHESIZER_HEADER_KILL_ON_BARGE_IN,
    SYNTHESIZER_HEADER_SPEAKER_PROFILE,
    SYNTHESIZER_HEADER_COMPLETION_CAUSE,
    SYNTHESIZER_HEADER_COMPLETION_REASON,
    SYNTHESIZER_HEADER_VOICE_GENDER,
    SYNTHESIZER_HEADER_VOICE_AGE,
    SYNTHESIZER_HEADER_VOICE_VARIANT,
    SYNTHESIZER_HEADER_VOICE_NAME,
    SYNTHESIZER_HEADER_PROSODY_VOLUME,
    SYNTHESIZER_HEADER_PROSODY_RATE,
    SYNTHESIZER_HEADER_SPEECH_MARKER,
    SYNTHESIZER_HEADER_SPEECH_LANGUAGE,
    SYNTHESIZER_HEADER_FETCH_HINT,
    SYNTHESIZER_HEADER_AUDIO_FETCH_HINT,
    SYNTHESIZER_HEADER_FAILED_URI,
    SYNTHESIZER_HEADER_FAILED_URI_CAUSE,
    SYNTHESIZER_HEADER_SPEAK_RESTART,
    SYNTHESIZER_HEADER_SPEAK_LENGTH,
    SYNTHESIZER_HEADER_LOAD_LEXICON,
    SYNTHESIZER_HEADER_LEXICON_SEARCH_ORDER,
    SYNTHESIZER_HEADER_COUNT
} mrcp_synthesizer_header_id;

typedef enum {
    SYNTHESIZER_COMPLETION_CAUSE_NORMAL = 0,
    SYNTHESIZER_COMPLETION_CAUSE_BARGE_IN = 1,
    SYNTHESIZER_COMPLETION_CAUSE_PARSE_FAILURE = 2,
    SYNTHESIZER_COMPLETION_CAUSE_URI_FAILURE = 3,
    SYNTHESIZER_COMPLETION_CAUSE_ERROR = 4,
    SYNTHESIZER_COMPLETION_CAUSE_LANGUAGE_UNSUPPORTED = 5,
    SYNTHESIZER_COMPLETION_CAUSE_LEXICON_LOAD_FAILURE = 6,
    SYNTHESIZER_COMPLETION_CAUSE_CANCELLED = 7,
    SYNTHESIZER_COMPLETION_CAUSE_COUNT = 8,
    SYNTHESIZER_COMPLETION_CAUSE_UNKNOWN = SYNTHESIZER_COMPLETION_CAUSE_COUNT
} mrcp_synth_completion_cause_e;

typedef enum {
    SPEECH_UNIT_SECOND,
    SPEECH_UNIT_WORD,
    SPEECH_UNIT_SENTENCE,
    SPEECH_UNIT_PARAGRAPH,
    SPEECH_UNIT_COUNT
} mrcp_speech_unit_e;

typedef enum {
    SPEECH_LENGTH_TYPE_TEXT,
    SPEECH_LENGTH_TYPE_NUMERIC_POSITIVE,
    SPEECH_LENGTH_TYPE_NUMERIC_NEGATIVE,
    SPEECH_LENGTH_TYPE_UNKNOWN
} mrcp_speech_length_type_e;

typedef enum {
    VOICE_GENDER_MALE,
    VOICE_GENDER_FEMALE,
    VOICE_GENDER_NEUTRAL,
    VOICE_GENDER_COUNT,
    VOICE_GENDER_UNKNOWN = VOICE_GENDER_COUNT
} mrcp_voice_gender_e;

typedef enum {
    PROSODY_VOLUME_TYPE_LABEL,
    PROSODY_VOLUME_TYPE_NUMERIC,
    PROSODY_VOLUME_TYPE_RELATIVE_CHANGE,
    PROSODY_VOLUME_TYPE_UNKNOWN
} mrcp_prosody_volume_type_e;

typedef enum {
    PROSODY_RATE_TYPE_LABEL,
    PROSODY_RATE_TYPE_RELATIVE_CHANGE,
    PROSODY_RATE_TYPE_UNKNOWN
} mrcp_prosody_rate_type_e;

typedef enum {
    PROSODY_VOLUME_SILENT,
    PROSODY_VOLUME_XSOFT,
    PROSODY_VOLUME_SOFT,
    PROSODY_VOLUME_MEDIUM,
    PROSODY_VOLUME_LOUD,
    PROSODY_VOLUME_XLOUD,
    PROSODY_VOLUME_DEFAULT,
    PROSODY_VOLUME_COUNT,
    PROSODY_VOLUME_UNKNOWN = PROSODY_VOLUME_COUNT
} mrcp_prosody_volume_label_e;

typedef enum {
    PROSODY_RATE_XSLOW,
    PROSODY_RATE_SLOW,
    PROSODY_RATE_MEDIUM,
    PROSODY_RATE_FAST,
    PROSODY_RATE_XFAST,
    PROSODY_RATE_DEFAULT,
    PROSODY_RATE_COUNT,
    PROSODY_RATE_UNKNOWN = PROSODY_RATE_COUNT
} mrcp_prosody_rate_label_e;

typedef struct mrcp_numeric_speech_length_t {
    apr_size_t length;
    mrcp_speech_unit_e unit;
} mrcp_numeric_speech_length_t;

typedef struct mrcp_speech_length_value_t {
    mrcp_speech_length_type_e type;
    union {
        apt_str_t tag;
        mrcp_numeric_speech_length_t numeric;
    } value;
} mrcp_speech_length_value_t;

typedef struct mrcp_voice_param_t {
    mrcp_voice_gender_e gender;
    apr_size_t age;
    apr_size_t variant;
    apt_str_t name;
} mrcp_voice_param_t;

typedef struct mrcp_prosody_volume_t {
    mrcp_prosody_volume_type_e type;
    union {
        mrcp_prosody_volume_label_e label;
        float numeric;
        float relative;
    } value;
} mrcp_prosody_volume_t;

typedef struct mrcp_prosody_rate_t {
    mrcp_prosody_rate_type_e type;
    union {
        mrcp_prosody_rate_label_e label;
        float relative;
    } value;
} mrcp_prosody_rate_t;

typedef struct mrcp_prosody_param_t {
    mrcp_prosody_volume_t volume;
    mrcp_prosody_rate_t rate;
} mrcp_prosody_param_t;

typedef struct mrcp_synth_header_t {
    mrcp_speech_length_value_t jump_size;
    apt_bool_t kill_on_barge_in;
    apt_str_t speaker_profile;
    mrcp_synth_completion_cause_e completion_cause;
    apt_str_t completion_reason;
    mrcp_voice_param_t voice_param;
    mrcp_prosody_param_t prosody_param;
    apt_str_t speech_marker;
    apt_str_t speech_language;
    apt_str_t fetch_hint;
    apt_str_t audio_fetch_hint;
    apt_str_t failed_uri;
    apt_str_t failed_uri_cause;
    apt_bool_t speak_restart;
    mrcp_speech_length_value_t speak_length;
    apt_bool_t load_lexicon;
    apt_str_t lexicon_search_order;
} mrcp_synth_header_t;

/* -------------------------------------------------------- MRCP engine --- */

typedef struct mrcp_engine_t mrcp_engine_t;
typedef struct mrcp_engine_channel_t mrcp_engine_channel_t;

typedef struct mrcp_engine_config_t {
    apr_size_t max_channel_count; /* 0 = unlimited; enforced by the server */
    apr_table_t *params;          /* <param name value>; NULL when none */
} mrcp_engine_config_t;

typedef struct mrcp_engine_method_vtable_t {
    apt_bool_t (*destroy)(mrcp_engine_t *engine);
    apt_bool_t (*open)(mrcp_engine_t *engine);
    apt_bool_t (*close)(mrcp_engine_t *engine);
    mrcp_engine_channel_t *(*create_channel)(mrcp_engine_t *engine, apr_pool_t *pool);
} mrcp_engine_method_vtable_t;

typedef struct mrcp_engine_event_vtable_t {
    apt_bool_t (*on_open)(mrcp_engine_t *engine, apt_bool_t status);
    apt_bool_t (*on_close)(mrcp_engine_t *engine);
} mrcp_engine_event_vtable_t;

struct mrcp_engine_t {
    const char *id;
    mrcp_resource_id resource_id;
    void *obj;
    const mrcp_engine_method_vtable_t *method_vtable;
    const mrcp_engine_event_vtable_t *event_vtable;
    void *event_obj;
    const mpf_codec_manager_t *codec_manager;
    const apt_dir_layout_t *dir_layout;
    mrcp_engine_config_t *config;
    apr_size_t cur_channel_count;
    apt_bool_t is_open;
    apr_pool_t *pool;
    mrcp_state_machine_t *(*create_state_machine)(void *obj, mrcp_version_e version, apr_pool_t *pool);
};

typedef struct mrcp_engine_channel_method_vtable_t {
    apt_bool_t (*destroy)(mrcp_engine_channel_t *channel);
    apt_bool_t (*open)(mrcp_engine_channel_t *channel);
    apt_bool_t (*close)(mrcp_engine_channel_t *channel);
    apt_bool_t (*process_request)(mrcp_engine_channel_t *channel, mrcp_message_t *request);
} mrcp_engine_channel_method_vtable_t;

typedef struct mrcp_engine_channel_event_vtable_t {
    apt_bool_t (*on_open)(mrcp_engine_channel_t *channel, apt_bool_t status);
    apt_bool_t (*on_close)(mrcp_engine_channel_t *channel);
    apt_bool_t (*on_message)(mrcp_engine_channel_t *channel, mrcp_message_t *message);
} mrcp_engine_channel_event_vtable_t;

struct mrcp_engine_channel_t {
    const mrcp_engine_channel_method_vtable_t *method_vtable;
    void *method_obj;
    const mrcp_engine_channel_event_vtable_t *event_vtable;
    void *event_obj;
    mpf_termination_t *termination;
    mrcp_engine_t *engine;
    apt_str_t id;
    mrcp_version_e mrcp_version;
    apt_bool_t is_open;
    apr_pool_t *pool;
    apr_table_t *attribs;
};

typedef apr_version_t mrcp_plugin_version_t;

mrcp_engine_t *mrcp_engine_create(mrcp_resource_id resource_id, void *obj,
                                  const mrcp_engine_method_vtable_t *vtable, apr_pool_t *pool);
const char *mrcp_engine_param_get(const mrcp_engine_t *engine, const char *name);
mrcp_engine_channel_t *mrcp_engine_channel_create(mrcp_engine_t *engine,
                                                  const mrcp_engine_channel_method_vtable_t *method_vtable,
                                                  void *method_obj, mpf_termination_t *termination,
                                                  apr_pool_t *pool);
mpf_termination_t *mrcp_engine_audio_termination_create(void *obj,
                                                        const mpf_audio_stream_vtable_t *stream_vtable,
                                                        mpf_stream_capabilities_t *capabilities,
                                                        apr_pool_t *pool);
const mpf_codec_descriptor_t *mrcp_engine_source_stream_codec_get(const mrcp_engine_channel_t *channel);

#ifdef __cplusplus
}
#endif

#endif /* UNIMRCP_SHIM_ABI_H */
