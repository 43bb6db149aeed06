/* test_alloc.c — runtime/alloc.c: who pays for a big block. Blocks are made
 * and freed through chorus_alloc as Lua would, each under a chosen run
 * (chorus_alloc_charge_to), in an order that has the owner table grow and
 * delete with its entries displaced. */
#include "alloc.h"

#include <lauxlib.h>
#include <stdlib.h>

#include "scheduler.h"
#include "unit.h"

static struct chorus_runtime *rt;

static struct chorus_run *new_run(size_t cap) {
    struct chorus_run *run = calloc(1, sizeof *run);
    run->rt = rt;
    run->limits.run_memory = cap;
    chorus_alloc_account_open(rt, run);
    return run;
}

static void *alloc_as(struct chorus_run *run, void *p, size_t osize, size_t nsize) {
    /* charge_to skips the cap check; a "current" run is what checks it */
    struct chorus_task task = {.run = run};
    rt->current = run ? &task : NULL;
    void *q = chorus_alloc(rt, p, osize, nsize);
    rt->current = NULL;
    return q;
}

#define NBLOCKS 3000

static void test_frees_give_back_to_the_maker(void) {
    struct chorus_run *a = new_run(0), *b = new_run(0);
    static void *blocks[NBLOCKS];
    static size_t sizes[NBLOCKS];
    size_t made[2] = {0, 0};
    for (int i = 0; i < NBLOCKS; i++) {
        sizes[i] = 2000 + (size_t)(i % 7) * 100;
        blocks[i] = alloc_as(i % 2 ? b : a, NULL, 0, sizes[i]);
        made[i % 2] += sizes[i];
    }
    CHECK_INT_EQ((long long)a->mem, (long long)made[0]);
    CHECK_INT_EQ((long long)b->mem, (long long)made[1]);
    /* free them in a scrambled order, each under the other run or none */
    for (int k = 0; k < NBLOCKS; k++) {
        int i = (int)(((long long)k * 1237) % NBLOCKS);
        alloc_as(k % 3 == 0 ? NULL : (i % 2 ? a : b), blocks[i], sizes[i], 0);
    }
    CHECK_INT_EQ((long long)a->mem, 0);
    CHECK_INT_EQ((long long)b->mem, 0);
    CHECK_INT_EQ((long long)rt->owners_len, 0);
    chorus_alloc_account_close(rt, a);
    chorus_alloc_account_close(rt, b);
    free(a);
    free(b);
}

static void test_small_blocks_go_to_the_current_run(void) {
    struct chorus_run *a = new_run(0), *b = new_run(0);
    void *p = alloc_as(a, NULL, 0, 100);
    CHECK_INT_EQ((long long)a->mem, 100);
    b->mem = 500;
    alloc_as(b, p, 100, 0);
    CHECK_INT_EQ((long long)a->mem, 100);
    CHECK_INT_EQ((long long)b->mem, 400);
    chorus_alloc_account_close(rt, a);
    chorus_alloc_account_close(rt, b);
    free(a);
    free(b);
}

static void test_a_closed_account_takes_nothing_back(void) {
    struct chorus_run *a = new_run(0);
    void *p = alloc_as(a, NULL, 0, 5000);
    chorus_alloc_account_close(rt, a);
    CHECK_INT_EQ(a->account, 0);
    /* the slot is reused by the next run, under a new generation */
    struct chorus_run *b = new_run(0);
    void *q = alloc_as(b, NULL, 0, 3000);
    alloc_as(b, p, 5000, 0); /* a's block: b gets nothing for it */
    CHECK_INT_EQ((long long)b->mem, 3000);
    alloc_as(NULL, q, 3000, 0);
    CHECK_INT_EQ((long long)b->mem, 0);
    chorus_alloc_account_close(rt, b);
    free(a);
    free(b);
}

static void test_growing_anothers_block_takes_it_over(void) {
    struct chorus_run *a = new_run(0), *b = new_run(10000);
    void *p = alloc_as(a, NULL, 0, 4000);
    p = alloc_as(b, p, 4000, 6000);
    CHECK_INT_EQ((long long)a->mem, 0);
    CHECK_INT_EQ((long long)b->mem, 6000);
    /* past b's cap: refused, b is marked, and the block is still b's */
    CHECK(alloc_as(b, p, 6000, 12000) == NULL);
    CHECK(b->killed == KILL_MEMORY);
    alloc_as(a, p, 6000, 0);
    CHECK_INT_EQ((long long)b->mem, 0);
    chorus_alloc_account_close(rt, a);
    chorus_alloc_account_close(rt, b);
    free(a);
    free(b);
}

static void test_charge_to_skips_the_cap(void) {
    struct chorus_run *a = new_run(1000);
    struct chorus_run *was = chorus_alloc_charge_to(rt, a);
    void *p = chorus_alloc(rt, NULL, 0, 4000);
    chorus_alloc_charge_to(rt, was);
    CHECK(p != NULL);
    CHECK_INT_EQ((long long)a->mem, 4000);
    CHECK(a->killed == KILL_NONE);
    alloc_as(NULL, p, 4000, 0);
    CHECK_INT_EQ((long long)a->mem, 0);
    chorus_alloc_account_close(rt, a);
    free(a);
}

static void test_a_workflow_keeps_what_outlives_its_run(void) {
    unsigned w = chorus_alloc_workflow_open(rt, "keeper");
    CHECK(w != 0);
    struct chorus_run *a = new_run(0);
    a->workflow = w;
    void *kept = alloc_as(a, NULL, 0, 5000);
    void *gone = alloc_as(a, NULL, 0, 2000);
    alloc_as(a, gone, 2000, 0);
    unsigned slot = a->account;
    chorus_alloc_account_close(rt, a);
    CHECK_INT_EQ((long long)chorus_alloc_workflow(rt, w)->kept, 5000);
    /* the slot stays taken while its block lives: the next run gets another */
    struct chorus_run *b = new_run(0);
    CHECK(b->account != slot);
    /* b grows the kept block: b pays for all of it, the workflow no more */
    kept = alloc_as(b, kept, 5000, 8000);
    CHECK_INT_EQ((long long)b->mem, 8000);
    CHECK_INT_EQ((long long)chorus_alloc_workflow(rt, w)->kept, 0);
    b->workflow = w;
    chorus_alloc_account_close(rt, b);
    CHECK_INT_EQ((long long)chorus_alloc_workflow(rt, w)->kept, 8000);
    /* freed under nobody: given back to the workflow, and b's slot is free */
    alloc_as(NULL, kept, 8000, 0);
    CHECK_INT_EQ((long long)chorus_alloc_workflow(rt, w)->kept, 0);
    CHECK_INT_EQ((long long)rt->owners_len, 0);
    /* a run with no workflow still closes to nowhere */
    struct chorus_run *c = new_run(0);
    void *p = alloc_as(c, NULL, 0, 3000);
    chorus_alloc_account_close(rt, c);
    alloc_as(NULL, p, 3000, 0);
    CHECK_INT_EQ((long long)chorus_alloc_workflow(rt, w)->kept, 0);
    free(a);
    free(b);
    free(c);
}

int main(void) {
    lua_State *L = luaL_newstate();
    rt = chorus_runtime_attach(L);
    test_frees_give_back_to_the_maker();
    test_small_blocks_go_to_the_current_run();
    test_a_closed_account_takes_nothing_back();
    test_growing_anothers_block_takes_it_over();
    test_charge_to_skips_the_cap();
    test_a_workflow_keeps_what_outlives_its_run();
    lua_close(L);
    return unit_summary();
}
