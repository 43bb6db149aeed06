/* alloc.h — the Lua heap allocator of the runtime.
 *
 * chorus_alloc charges growth to the run whose task is executing and
 * refuses it past that run's cap, which Lua then raises as a memory error
 * inside the run; under it, freed small blocks are kept per size class and
 * handed out again (the cache), when malloc sizes chunks as glibc does.
 */
#ifndef CHORUS_ALLOC_H
#define CHORUS_ALLOC_H

#include <lua.h>

#include "runtime.h"

/* The lua_Alloc of a state with a runtime; ud is the runtime. */
void *chorus_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Whether f is lauxlib's allocator (realloc/free) over a malloc that sizes
 * small chunks as the cache assumes: only then may the cache be on. */
int chorus_alloc_cache_usable(lua_Alloc f);

/* Frees every cached block and the owner table (the runtime is closing;
 * blocks freed after this are nobody's). */
void chorus_alloc_cache_drop(struct chorus_runtime *rt);

/* Accounts. Each block bigger than CHORUS_ALLOC_OWNED_MIN bytes remembers
 * the account of the run it was made for, and its free (or a move) gives
 * its bytes back to that run, not to whichever run the collector happens
 * to sweep it under. Without this a run that churned big temporary strings
 * was charged for them until a collection ran under it, and was killed for
 * memory it no longer held while the run that swept was undercharged. Small
 * blocks are given back to the run current when they are freed: an owner
 * for each would cost a table entry per Lua object, and blocks made before
 * the runtime existed have none. */
#define CHORUS_ALLOC_OWNED_MIN 1024

/* Gives the run an account (run->account); without memory for one, the
 * run's blocks are charged and given back as small blocks are. */
void chorus_alloc_account_open(struct chorus_runtime *rt, struct chorus_run *run);

/* Closes the run's account: what its blocks give back later goes nowhere. */
void chorus_alloc_account_close(struct chorus_runtime *rt, struct chorus_run *run);

/* Charges what Lua allocates from now on to run (NULL: back to the current
 * run), without checking its cap: for C callbacks that hand a run bytes it
 * was already charged for (a response body). Returns the previous one. */
struct chorus_run *chorus_alloc_charge_to(struct chorus_runtime *rt, struct chorus_run *run);

#endif
