/* lua_systemd.h — core.sd_notify and core.sd_watchdog_interval: chorus serve's
 * side of systemd's Type=notify protocol (libsystemd's sd_notify).
 *
 * systemd passes NOTIFY_SOCKET (and WATCHDOG_USEC, WATCHDOG_PID when the
 * unit has WatchdogSec=) in the environment; without them both functions
 * do nothing, so the same binary runs under systemd, another supervisor or
 * none. Nothing here needs systemd running: a test binds a datagram socket
 * and names it in NOTIFY_SOCKET.
 */
#ifndef CHORUS_LUA_SYSTEMD_H
#define CHORUS_LUA_SYSTEMD_H

#include <lua.h>

/* core.sd_notify(state) → true when sent, false when there is no
 * NOTIFY_SOCKET (not started by systemd), or nil and a message when it
 * could not be sent (a socket nobody listens on, a malformed address).
 * state is sd_notify's: newline-separated "READY=1", "STOPPING=1",
 * "WATCHDOG=1", "STATUS=...". */
int chorus_lua_systemd_notify(lua_State *L);

/* core.sd_watchdog_interval() → seconds between WATCHDOG=1 pings (half of
 * WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or false when no
 * watchdog is asked for (no WATCHDOG_USEC, or WATCHDOG_PID names another
 * process), or nil and a message when WATCHDOG_USEC is malformed. */
int chorus_lua_systemd_watchdog(lua_State *L);

/* Adds core.sd_notify and core.sd_watchdog_interval to the chorus.core table at
 * the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_systemd_open(lua_State *L);

#endif
