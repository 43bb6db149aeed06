/* embedded.h — the Lua modules of lua/chorus/, compiled into the binary.
 *
 * The table is generated at build time (scripts/embed_lua.lua) and ends with
 * an entry whose name is NULL. chorus_embedded_preload registers each (and
 * chorus.core) as a package.preload loader, so `require "chorus.http"` needs
 * no files on disk: in ./chorus and in the fuzz targets alike.
 */
#ifndef CHORUS_EMBEDDED_H
#define CHORUS_EMBEDDED_H

#include <lua.h>
#include <stddef.h>

struct chorus_embedded {
    const char *name;      /* module name, e.g. "chorus.http" */
    const char *chunkname; /* "@lua/chorus/http.lua", for error messages */
    const char *source;
    size_t len;
};

extern const struct chorus_embedded chorus_embedded_lua[];

/* Registers chorus.core and every embedded module in package.preload. */
void chorus_embedded_preload(lua_State *L);

#endif
