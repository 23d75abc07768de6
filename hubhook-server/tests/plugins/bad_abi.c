/*
 * Broken plugins for hubhook's tests, one per macro:
 *   -DWRONG_VERSION  a table claiming ABI version 99
 *   -DSMALL_TABLE    a table whose size is smaller than version 1's
 *   -DNO_SYMBOL      a library without hubhook_plugin_v1
 *   -DNULL_TABLE     hubhook_plugin_v1 returns NULL
 */
#include <stddef.h>

#include "hubhook_plugin.h"

#ifdef NO_SYMBOL
int something_else(void) { return 42; }
#else
static void *init(hh_str config, hh_sink error) { (void)config; (void)error; return (void *)1; }
static int32_t handle(void *s, hh_str d, hh_sink o) { (void)s; (void)d; (void)o; return 0; }
static void destroy(void *s) { (void)s; }

static const hh_plugin_table TABLE = {
#ifdef SMALL_TABLE
    offsetof(hh_plugin_table, init),
#else
    sizeof(hh_plugin_table),
#endif
#ifdef WRONG_VERSION
    99,
#else
    HUBHOOK_PLUGIN_ABI_VERSION,
#endif
    {(const uint8_t *)"bad", 3},
    {(const uint8_t *)"0", 1},
    init,
    handle,
    destroy,
};

const hh_plugin_table *hubhook_plugin_v1(void) {
#ifdef NULL_TABLE
    (void)TABLE;
    return NULL;
#else
    return &TABLE;
#endif
}
#endif
