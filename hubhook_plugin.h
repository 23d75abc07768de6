/*
 * hubhook_plugin.h — the C ABI of hubhook handler plugins, version 1.
 *
 * A plugin is a shared library exporting one function:
 *
 *     const hh_plugin_table *hubhook_plugin_v1(void);
 *
 * returning a pointer to a table that lives as long as the library (a static).
 *
 * Rules (docs/PLUGINS.md has the long form):
 *  - Only borrowed byte strings cross: an hh_str is valid for the duration of the call
 *    that passes it (the table's name and version: for the life of the library). They
 *    are NOT NUL-terminated.
 *  - Text coming back (an outcome, an error) goes through the hh_sink the host passes:
 *    call sink.write(sink.ctx, text) any number of times during the call; the host copies
 *    it. Nothing is ever freed on the other side.
 *  - init(config, error): config is JSON (the handler's [handler.config] table). Return
 *    your state, or NULL after writing the reason to `error`.
 *  - handle(state, delivery, out): delivery is JSON:
 *        {"delivery": "<26-char id>", "attempt": 1, "message": { ...HubMessage... }}
 *    where message is Docker Hub's webhook shape plus "source", "registry", "digest".
 *    Write a one-line summary (on success) or the reason (otherwise) to `out`, and return
 *    a HH_STATUS_* value. handle may be called from several threads at once: it must be
 *    thread-safe. The host runs it on a blocking thread under the handler's timeout; a
 *    call past its timeout is abandoned, not interrupted.
 *  - destroy(state): called once, after every handle call returned.
 *  - The host checks `size` and `abi_version` before anything else. Later versions only
 *    append fields to the table.
 *  - The library is never unloaded. A crash in plugin code takes the server down with
 *    it: a plugin runs in the server's process.
 */
#ifndef HUBHOOK_PLUGIN_H
#define HUBHOOK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HUBHOOK_PLUGIN_ABI_VERSION 1u

#define HH_STATUS_OK 0        /* handled; `out` holds a summary */
#define HH_STATUS_ERROR 1     /* failed; `out` says why */
#define HH_STATUS_BAD_INPUT 2 /* the delivery JSON could not be read */
#define HH_STATUS_PANIC 3     /* the handler crashed in a way it could catch */

typedef struct hh_str {
    const uint8_t *ptr; /* may be NULL when len is 0 */
    size_t len;
} hh_str;

typedef struct hh_sink {
    void *ctx;                              /* pass back unchanged */
    void (*write)(void *ctx, hh_str text);  /* the host copies `text` */
} hh_sink;

typedef struct hh_plugin_table {
    size_t size;          /* sizeof(hh_plugin_table) */
    uint32_t abi_version; /* HUBHOOK_PLUGIN_ABI_VERSION */
    hh_str name;
    hh_str version;
    void *(*init)(hh_str config, hh_sink error);
    int32_t (*handle)(void *state, hh_str delivery, hh_sink out);
    void (*destroy)(void *state);
} hh_plugin_table;

const hh_plugin_table *hubhook_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* HUBHOOK_PLUGIN_H */
