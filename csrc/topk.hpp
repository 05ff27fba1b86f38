// Top-k selection for encoding: the k largest of a row in the order of a stable sort of -x
// (ties: lower class first). Plain C++ with GCC/Clang vector extensions (SSE2 on x86-64, NEON
// on arm64; no machine-specific flags).
//
// Why not one insertion pass over the row: with a running threshold, about k*ln(C/k) classes
// (~65 for k=20, C=527) each cost a shift of ~k/2 entries and two mispredicted branches.
// Instead, a threshold guessed from the previous row of the batch picks ~1.5k candidates in
// one branch-free pass, and the candidates are ranked by counting, without data-dependent
// branches. The guess only decides the speed: a row with fewer than k candidates falls back
// to the insertion pass, so the result never depends on it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace cedstore {

namespace topk_detail {

typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
    f32x4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Bit j set when lane j of a comparison result is true.
inline unsigned mask4(i32x4 lanes) {
#if defined(__SSE2__)
    return static_cast<unsigned>(__builtin_ia32_movmskps(reinterpret_cast<f32x4>(lanes)));
#else
    const i32x4 b = lanes & i32x4{1, 2, 4, 8};
    return static_cast<unsigned>(b[0] | b[1] | b[2] | b[3]);
#endif
}

// kPack.lanes[mask]: the lanes set in an 8-bit mask, in order; kPack.count[mask]: how many.
struct PackTable {
    uint32_t lanes[256][8];
    uint8_t count[256];
};
constexpr PackTable make_pack_table() {
    PackTable t{};
    for (unsigned mask = 0; mask < 256; ++mask) {
        uint8_t n = 0;
        for (uint32_t lane = 0; lane < 8; ++lane)
            if (mask & (1u << lane)) t.lanes[mask][n++] = lane;
        t.count[mask] = n;
    }
    return t;
}
inline constexpr PackTable kPack = make_pack_table();  // 8 KiB

}  // namespace topk_detail

// Scratch memory and state reused across the rows of one batch.
struct TopkScratch {
    std::vector<float> values;      // insertion pass: values, non-increasing ...
    std::vector<uint32_t> classes;  // ... and their classes
    std::vector<uint32_t> cand;     // candidate classes (x >= threshold), increasing
    std::vector<float> cand_values; // their values, padded with -inf
    std::vector<uint32_t> by_rank;  // candidate position by rank
    std::vector<uint8_t> taken;     // rank already given: a tie
    // A value a little below the k-th largest of the next row, guessed from the last row.
    float threshold = -std::numeric_limits<float>::infinity();
};

// Stable insertion selection of the `want` largest of x[ids[0..m)] (ids increasing; all of
// [0, m) when ids is null) into s.values / s.classes. Returns the number kept, min(want, m).
inline uint32_t insertion_select(const float* x, const uint32_t* ids, uint32_t m, uint32_t want, TopkScratch& s) {
    s.values.resize(want);
    s.classes.resize(want);
    float* bv = s.values.data();
    uint32_t* bc = s.classes.data();
    uint32_t n = 0;  // bv[0, n) is non-increasing, equal values in class order
    for (uint32_t j = 0; j < m; ++j) {
        const uint32_t i = ids ? ids[j] : j;
        const float v = x[i];
        uint32_t pos;
        if (n == want) {
            if (!(v > bv[want - 1])) continue;  // equal loses: a later class
            pos = want - 1;
        } else {
            pos = n++;
        }
        for (; pos > 0 && bv[pos - 1] < v; --pos) {
            bv[pos] = bv[pos - 1];
            bc[pos] = bc[pos - 1];
        }
        bv[pos] = v;
        bc[pos] = i;
    }
    return n;
}

// Writes to cand the classes i with x[i] >= t, increasing; returns how many. cand holds c + 7.
// Also checks, in the same pass, that every x[i] is finite (*finite).
inline uint32_t compact_candidates(const float* x, uint32_t c, float t, uint32_t* cand, bool* finite) {
    using namespace topk_detail;
    const f32x4 tv = {t, t, t, t};
    const i32x4 exponent = {0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000};
    i32x4 bad = {0, 0, 0, 0};
    u32x4 base = {0, 0, 0, 0};
    uint32_t m = 0, i = 0;
    for (; i + 8 <= c; i += 8, base += 8) {  // 8 classes at a time: store all lanes, advance by the count
        const f32x4 x0 = load4(x + i), x1 = load4(x + i + 4);
        bad |= ((reinterpret_cast<i32x4>(x0) & exponent) == exponent) |
               ((reinterpret_cast<i32x4>(x1) & exponent) == exponent);
        const unsigned mask = mask4(x0 >= tv) | (mask4(x1 >= tv) << 4);
        u32x4 lanes0, lanes1;
        std::memcpy(&lanes0, kPack.lanes[mask], sizeof lanes0);
        std::memcpy(&lanes1, kPack.lanes[mask] + 4, sizeof lanes1);
        lanes0 += base;
        lanes1 += base;
        std::memcpy(cand + m, &lanes0, sizeof lanes0);
        std::memcpy(cand + m + 4, &lanes1, sizeof lanes1);
        m += kPack.count[mask];
    }
    int32_t any_bad = bad[0] | bad[1] | bad[2] | bad[3];
    for (; i < c; ++i) {
        uint32_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        any_bad |= (bits & 0x7f800000u) == 0x7f800000u;
        cand[m] = i;
        m += x[i] >= t;
    }
    *finite = any_bad == 0;
    return m;
}

// Ranks the m candidates v[0, m) by counting, rank(a) = #{j: v_j > v_a}, 8 candidates at a
// time against every v_j. v is padded with -inf to `padded`, a multiple of 8. Returns false
// if two candidates share a rank (equal values): the caller then orders ties itself.
inline bool rank_candidates(const float* v, uint32_t m, uint32_t padded, uint32_t* by_rank, uint8_t* taken) {
    using namespace topk_detail;
    std::memset(taken, 0, m);
    uint8_t collided = 0;
    for (uint32_t a = 0; a < padded; a += 8) {
        const f32x4 va0 = load4(v + a), va1 = load4(v + a + 4);
        i32x4 g0 = {0, 0, 0, 0}, g1 = {0, 0, 0, 0};
        for (uint32_t j = 0; j < m; ++j) {
            const f32x4 vj = {v[j], v[j], v[j], v[j]};
            g0 -= vj > va0;
            g1 -= vj > va1;
        }
        int32_t ranks[8];
        std::memcpy(ranks, &g0, sizeof g0);
        std::memcpy(ranks + 4, &g1, sizeof g1);
        for (uint32_t lane = 0; lane < 8 && a + lane < m; ++lane) {
            const uint32_t rank = static_cast<uint32_t>(ranks[lane]);  // < m: v_a is not > v_a
            collided |= taken[rank];
            taken[rank] = 1;
            by_rank[rank] = a + lane;
        }
    }
    return !collided;
}

// Selects the k largest of x[0, c) in a stable order (ties: lower class first), exactly the
// first k of np.argsort(-x, kind="stable"). Returns false, and no selection, if some x[i] is
// not finite. Precondition: 1 <= k <= c.
inline bool select_topk(const float* x, uint32_t c, uint32_t k, TopkScratch& s, int32_t* indices) {
    constexpr float kNoThreshold = -std::numeric_limits<float>::infinity();
    if (k > 64) {  // insertion costs O(c*k); sort partially in O(c log k)
        for (uint32_t i = 0; i < c; ++i)
            if (!std::isfinite(x[i])) return false;
        s.cand.resize(c);
        std::iota(s.cand.begin(), s.cand.end(), 0u);
        const auto before = [x](uint32_t a, uint32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
        std::partial_sort(s.cand.begin(), s.cand.begin() + k, s.cand.end(), before);
        for (uint32_t j = 0; j < k; ++j) indices[j] = static_cast<int32_t>(s.cand[j]);
        return true;
    }
    const uint32_t want = std::min(c, k + k / 2 + 4);  // the rank whose value is the next guess
    const float t = s.threshold;
    s.cand.resize(c + 7);
    uint32_t* cand = s.cand.data();
    bool finite = true;
    const uint32_t m = compact_candidates(x, c, t, cand, &finite);
    if (!finite) return false;
    if (m >= k && m <= 4 * k + 16) {
        const uint32_t padded = (m + 7) & ~7u;
        s.cand_values.assign(padded, kNoThreshold);
        s.by_rank.resize(m);
        s.taken.resize(m);
        float* v = s.cand_values.data();
        for (uint32_t j = 0; j < m; ++j) v[j] = x[cand[j]];
        uint32_t* by_rank = s.by_rank.data();
        if (!rank_candidates(v, m, padded, by_rank, s.taken.data())) {
            // Equal values: a stable sort of the candidate positions (in class order) is exact.
            std::iota(by_rank, by_rank + m, 0u);
            std::stable_sort(by_rank, by_rank + m, [v](uint32_t a, uint32_t b) { return v[a] > v[b]; });
        }
        for (uint32_t j = 0; j < k; ++j) indices[j] = static_cast<int32_t>(cand[by_rank[j]]);
        const float kth = v[by_rank[k - 1]];
        // Next guess: the value of rank want-1; with fewer candidates, widen [t, kth] below t.
        s.threshold = m >= want ? v[by_rank[want - 1]]
                                : t - (kth - t) * static_cast<float>(want - m) / static_cast<float>(m - k + 1);
        return true;
    }
    // Fewer than k candidates (the guess was too high), or too many to rank: insertion.
    const uint32_t n = m >= k ? insertion_select(x, cand, m, want, s) : insertion_select(x, nullptr, c, want, s);
    for (uint32_t j = 0; j < k; ++j) indices[j] = static_cast<int32_t>(s.classes[j]);
    s.threshold = n == want ? s.values[want - 1] : kNoThreshold;
    return true;
}

}  // namespace cedstore
