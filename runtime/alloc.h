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
#include <stdint.h>

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

/* Closes the run's account. Its blocks still alive then are kept by its
 * workflow (run->workflow, below): their bytes move to that workflow's
 * account and their frees give them back to it. Without a workflow, what
 * they give back later goes nowhere. */
void chorus_alloc_account_close(struct chorus_runtime *rt, struct chorus_run *run);

/* Workflow accounts. A script's module state (a top-level `local keep =
 * {}`) outlives its runs, and so does whatever a run puts in it: each run
 * stayed under its cap while what they left behind grew without one. So a
 * run of a workflow (run->workflow, set by whoever starts it) hands the
 * big blocks it leaves alive to that workflow's account as it ends, and a
 * new run of a workflow keeping more than limits.workflow_memory is
 * stopped (KILL_KEPT). Blocks of up to CHORUS_ALLOC_OWNED_MIN bytes have
 * no owner and are not counted: a workflow that keeps many small tables
 * escapes the count (see above for why). One account per loaded script
 * version (lua/chorus/script.lua); accounts live as long as the runtime. */
struct chorus_workflow_account {
    char *name;            /* owned; for the kill's message */
    size_t kept;           /* bytes of its runs' blocks alive after their run ended */
    size_t collected;      /* kept after the last collection the cap made; 0: none since under */
    uint64_t collected_ms; /* loop time of that collection */
};

/* A new workflow account named name; returns its id (> 0), or 0 without
 * memory for it (its runs then keep nothing counted). */
unsigned chorus_alloc_workflow_open(struct chorus_runtime *rt, const char *name);

/* Renames workflow account id; returns 0 without memory (the old name stays). */
int chorus_alloc_workflow_rename(struct chorus_runtime *rt, unsigned id, const char *name);

/* The account id, or NULL when id is none or unknown. */
struct chorus_workflow_account *chorus_alloc_workflow(struct chorus_runtime *rt, unsigned id);

/* Whether workflow id keeps more than cap bytes (0: no cap) between runs,
 * checked as one of its runs starts. Garbage not yet collected is not kept
 * memory, so an account over its cap first gets a full collection on L,
 * but at most once per second while it has not grown since the last one:
 * a workflow stuck over its cap does not make every request collect. */
int chorus_alloc_workflow_over(struct chorus_runtime *rt, lua_State *L, unsigned id, size_t cap);

/* Charges what Lua allocates from now on to run (NULL: back to the current
 * run), without checking its cap: for C callbacks that hand a run bytes it
 * was already charged for (a response body). Returns the previous one. */
struct chorus_run *chorus_alloc_charge_to(struct chorus_runtime *rt, struct chorus_run *run);

#endif
