/*
 * pushlog.c — a hubhook plugin in C: appends each delivery, as one JSON line, to a file.
 *
 * Build:  cc -shared -fPIC -O2 -I../.. -o libpushlog.so pushlog.c
 * Load:   [[handler]]
 *         type = "plugin"
 *         path = "/usr/lib/hubhook/libpushlog.so"
 *         [handler.config]
 *         file = "/var/log/hubhook/pushes.jsonl"
 *
 * The configuration is JSON; to stay dependency-free this reads its one string key with
 * a deliberately small scanner that accepts only plain (unescaped) paths.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hubhook_plugin.h"

struct state {
    FILE *file;
    pthread_mutex_t lock; /* handle may run on several threads at once */
};

static hh_str str(const char *text) {
    hh_str s = {(const uint8_t *)text, strlen(text)};
    return s;
}

static void say(hh_sink sink, const char *text) { sink.write(sink.ctx, str(text)); }

/* Finds "key": "value" in `json` and copies value (no escapes allowed) into out. */
static int find_string(hh_str json, const char *key, char *out, size_t cap) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    size_t plen = strlen(pattern);
    for (size_t i = 0; i + plen <= json.len; i++) {
        if (memcmp(json.ptr + i, pattern, plen) != 0) continue;
        size_t j = i + plen;
        while (j < json.len && (json.ptr[j] == ' ' || json.ptr[j] == ':')) j++;
        if (j >= json.len || json.ptr[j] != '"') return 0;
        size_t start = ++j;
        while (j < json.len && json.ptr[j] != '"' && json.ptr[j] != '\\') j++;
        if (j >= json.len || json.ptr[j] != '"' || j - start >= cap) return 0;
        memcpy(out, json.ptr + start, j - start);
        out[j - start] = 0;
        return 1;
    }
    return 0;
}

static void *init(hh_str config, hh_sink error) {
    char path[4096];
    if (!find_string(config, "file", path, sizeof path)) {
        say(error, "config needs \"file\": the path of the log to append to");
        return NULL;
    }
    FILE *file = fopen(path, "a");
    if (!file) {
        char reason[4200];
        snprintf(reason, sizeof reason, "cannot open %s: %s", path, strerror(errno));
        say(error, reason);
        return NULL;
    }
    struct state *state = calloc(1, sizeof *state);
    if (!state) {
        fclose(file);
        say(error, "out of memory");
        return NULL;
    }
    state->file = file;
    pthread_mutex_init(&state->lock, NULL);
    return state;
}

static int32_t handle(void *opaque, hh_str delivery, hh_sink out) {
    struct state *state = opaque;
    pthread_mutex_lock(&state->lock);
    size_t written = fwrite(delivery.ptr, 1, delivery.len, state->file);
    int ok = written == delivery.len && fputc('\n', state->file) != EOF && fflush(state->file) == 0;
    pthread_mutex_unlock(&state->lock);
    if (!ok) {
        say(out, "cannot append to the log file");
        return HH_STATUS_ERROR;
    }
    say(out, "appended the delivery to the log file");
    return HH_STATUS_OK;
}

static void destroy(void *opaque) {
    struct state *state = opaque;
    fclose(state->file);
    pthread_mutex_destroy(&state->lock);
    free(state);
}

static const hh_plugin_table TABLE = {
    sizeof(hh_plugin_table),
    HUBHOOK_PLUGIN_ABI_VERSION,
    {(const uint8_t *)"pushlog", 7},
    {(const uint8_t *)"1.0.0", 5},
    init,
    handle,
    destroy,
};

const hh_plugin_table *hubhook_plugin_v1(void) { return &TABLE; }
