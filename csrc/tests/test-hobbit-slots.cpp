// Unit tests of the slot allocator (csrc/hobbit-slots.h): placement of hi and lo copies in the
// shared units, eviction order, pins, and the books staying consistent.

#include "hobbit-evict.h"
#include "hobbit-slots.h"
#include "hobbit-test.h"

#include <random>
#include <set>
#include <vector>

// the clock at a tick (layer 0 of pass 0)
static llama_hobbit_clock at(uint64_t tick) {
    llama_hobbit_clock c;
    c.tick = tick;
    return c;
}

static void test_lo_and_hi_placement() {
    llama_hobbit_slots s;
    s.init(/*n_layer*/ 2, /*n_expert*/ 4, /*has_lo*/ true, /*n_units*/ 6, /*hi_span*/ 2);
    llama_hobbit_evict_lru lru;
    CHECK_EQ(s.n_available(), 6);
    CHECK_EQ(s.n_slots(LLAMA_HOBBIT_HI), 3);
    CHECK_EQ(s.n_slots(LLAMA_HOBBIT_LO), 6);

    const int hi0 = s.index(0, 0, LLAMA_HOBBIT_HI);
    const int slot = s.alloc(hi0, lru, at(1));
    CHECK(slot >= 0);
    CHECK_EQ(s.entry(hi0).state, LLAMA_HOBBIT_LOADING);
    CHECK_EQ(s.entry(hi0).pins, 1);
    CHECK_EQ(s.owner(slot*2), hi0);
    CHECK_EQ(s.owner(slot*2 + 1), hi0);
    CHECK_EQ(s.n_available(), 4);

    const int lo1 = s.index(0, 1, LLAMA_HOBBIT_LO);
    const int lslot = s.alloc(lo1, lru, at(1));
    CHECK(lslot >= 0 && lslot/2 != slot);
    CHECK_EQ(s.n_available(), 3);
    CHECK(s.consistent());

    s.release(hi0);
    CHECK(!s.cached(hi0));
    CHECK_EQ(s.entry(hi0).pins, 1); // pins stay with the caller until it unpins
    s.unpin(hi0);
    CHECK_EQ(s.n_available(), 5);
    CHECK(s.consistent());
}

static void test_pinned_and_loading_entries_are_never_evicted() {
    llama_hobbit_slots s;
    s.init(1, 8, true, 4, 2);
    llama_hobbit_evict_lru lru;
    std::vector<int> idx;
    for (int e = 0; e < 4; ++e) {
        idx.push_back(s.index(0, e, LLAMA_HOBBIT_LO));
        CHECK(s.alloc(idx.back(), lru, at(1)) >= 0); // loading, pinned
    }
    CHECK_EQ(s.n_available(), 0);
    const int more = s.index(0, 5, LLAMA_HOBBIT_LO);
    CHECK_EQ(s.alloc(more, lru, at(2)), -1);
    CHECK(!s.cached(more));
    // ready but pinned by a graph: still not evictable
    for (int i : idx) {
        s.entry(i).state = LLAMA_HOBBIT_READY;
    }
    CHECK_EQ(s.alloc(more, lru, at(2)), -1);
    // unpin one: it goes
    s.unpin(idx[2]);
    CHECK_EQ(s.n_available(), 1);
    std::vector<int> evicted;
    CHECK(s.alloc(more, lru, at(2), &evicted) >= 0);
    CHECK_EQ(evicted.size(), 1);
    CHECK_EQ(evicted[0], idx[2]);
    CHECK(!s.cached(idx[2]));
    CHECK(s.consistent());
}

static void test_lru_order_and_hi_spans() {
    llama_hobbit_slots s;
    s.init(1, 8, true, 4, 2);
    llama_hobbit_evict_lru lru;
    // four lo copies used at ticks 4, 1, 3, 2 (units 0..3)
    const int ticks[4] = { 4, 1, 3, 2 };
    int idx[4];
    for (int e = 0; e < 4; ++e) {
        idx[e] = s.index(0, e, LLAMA_HOBBIT_LO);
        CHECK_EQ(s.alloc(idx[e], lru, at(0)), e);
        s.entry(idx[e]).state    = LLAMA_HOBBIT_READY;
        s.entry(idx[e]).last_use = ticks[e];
        s.unpin(idx[e]);
    }
    // a lo copy takes the least recently used unit
    const int lo5 = s.index(0, 5, LLAMA_HOBBIT_LO);
    std::vector<int> evicted;
    CHECK_EQ(s.alloc(lo5, lru, at(5), &evicted), 1);
    CHECK_EQ(evicted.size(), 1);
    CHECK_EQ(evicted[0], idx[1]);
    s.entry(lo5).state    = LLAMA_HOBBIT_READY;
    s.entry(lo5).last_use = 5;
    s.unpin(lo5);
    // a hi copy takes the aligned span whose most recent use is oldest: units 2-3 (ticks 3 and 2)
    const int hi6 = s.index(0, 6, LLAMA_HOBBIT_HI);
    evicted.clear();
    CHECK_EQ(s.alloc(hi6, lru, at(6), &evicted), 1);
    CHECK_EQ(evicted.size(), 2);
    CHECK(s.owner(2) == hi6 && s.owner(3) == hi6);
    CHECK(s.cached(idx[0]) && s.cached(lo5));
    CHECK(s.consistent());
}

static void test_fragmentation_blocks_hi_but_not_lo() {
    llama_hobbit_slots s;
    s.init(1, 8, true, 4, 2);
    llama_hobbit_evict_lru lru;
    // pinned lo copies in units 0 and 2: every hi span has a pinned unit
    CHECK_EQ(s.alloc(s.index(0, 0, LLAMA_HOBBIT_LO), lru, at(0)), 0);
    CHECK_EQ(s.alloc(s.index(0, 1, LLAMA_HOBBIT_LO), lru, at(0)), 1);
    CHECK_EQ(s.alloc(s.index(0, 2, LLAMA_HOBBIT_LO), lru, at(0)), 2);
    s.unpin(s.index(0, 1, LLAMA_HOBBIT_LO));
    s.entry(s.index(0, 1, LLAMA_HOBBIT_LO)).state = LLAMA_HOBBIT_READY;
    CHECK_EQ(s.n_available(), 2);
    CHECK_EQ(s.alloc(s.index(0, 5, LLAMA_HOBBIT_HI), lru, at(1)), -1);
    CHECK(s.alloc(s.index(0, 5, LLAMA_HOBBIT_LO), lru, at(1)) >= 0);
    CHECK(s.consistent());
}

static void test_random_operations_keep_the_books() {
    std::mt19937 rng(1234);
    llama_hobbit_slots s;
    const int n_layer = 3, n_expert = 6, n_units = 10, hi_span = 2;
    s.init(n_layer, n_expert, true, n_units, hi_span);
    llama_hobbit_evict_lru lru;
    std::multiset<int> pinned; // entries we hold a pin on
    for (int step = 1; step <= 5000; ++step) {
        const int op = rng() % 4;
        if (op <= 1) {
            const int il = rng() % n_layer, e = rng() % n_expert, lvl = rng() % 2;
            const int idx = s.index(il, e, lvl);
            if (s.cached(idx)) {
                continue;
            }
            const int avail_before = s.n_available();
            if (s.alloc(idx, lru, at(step)) >= 0) {
                pinned.insert(idx);
                CHECK_EQ(s.n_available(), avail_before - s.span(lvl));
            }
        } else if (op == 2 && !pinned.empty()) {
            auto it = pinned.begin();
            std::advance(it, rng() % pinned.size());
            s.entry(*it).state = s.cached(*it) ? LLAMA_HOBBIT_READY : LLAMA_HOBBIT_EMPTY;
            s.entry(*it).last_use = step;
            s.unpin(*it);
            pinned.erase(it);
        } else if (op == 3 && !pinned.empty()) {
            auto it = pinned.begin(); // a failed load: the copy goes, the pin stays until released
            if (s.cached(*it) && s.entry(*it).state == LLAMA_HOBBIT_LOADING) {
                s.release(*it);
            }
        }
        // nobody we hold a pin on was evicted: a cached pinned entry keeps its units
        for (int idx : pinned) {
            CHECK(s.entry(idx).pins > 0);
        }
        if (!s.consistent()) {
            CHECK(!"books inconsistent");
            break;
        }
    }
}

int main() {
    test_lo_and_hi_placement();
    test_pinned_and_loading_entries_are_never_evicted();
    test_lru_order_and_hi_spans();
    test_fragmentation_blocks_hi_but_not_lo();
    test_random_operations_keep_the_books();
    return hobbit_test_result("test-hobbit-slots");
}
