// Per-row kernels shared by the reader, the writer and encode_topk: top-k selection with fp16
// rounding, and record decoding. Plain loops over raw pointers; callers check bounds first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "format.hpp"
#include "fp16.hpp"

namespace cedstore {

enum class Fault : uint8_t { kNone, kNaN, kInf, kOverflow };

// The first problem found while encoding a batch.
struct EncodeFault {
    Fault kind = Fault::kNone;
    size_t row = 0;
    uint32_t cls = 0;
    float value = 0.0f;
};

// "nan", "inf", ... for messages.
inline const char* fault_text(Fault f) {
    switch (f) {
        case Fault::kNaN: return "NaN; values must be finite";
        case Fault::kInf: return "infinite; values must be finite";
        case Fault::kOverflow: return "outside the float16 range (|x| < 65520), it would be stored as Inf";
        default: return "fine";
    }
}

// Scratch memory and state reused across the rows of one batch.
struct TopkScratch {
    std::vector<float> row;          // a float16 row converted to float32
    std::vector<float> values;       // insertion buffer: values, non-increasing ...
    std::vector<uint32_t> classes;   // ... and their classes
    std::vector<uint32_t> order;     // large k: class ids to partially sort
    std::vector<uint32_t> cand;      // candidate classes (x >= threshold), increasing
    std::vector<float> cand_values;  // their values
    // A guess of a value a little below the k-th largest of the next row, taken from the
    // previous row (teacher outputs of one batch look alike). Only a guess: a row with fewer
    // than k values >= threshold falls back to a full pass, so results never depend on it.
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

// Selects the k largest of x[0, c) in a stable order (ties: lower class first), exactly the
// first k of np.argsort(-x, kind="stable"). Precondition: x is finite, 1 <= k <= c.
//
// Fast path: the classes with x >= s.threshold (branch-free, in class order) are ranked by
// counting, rank(i) = #{j: v_j > v_i} + #{j before i: v_j == v_i}: no data-dependent
// branches. When there are fewer than k of them, or too many to rank cheaply, a stable
// insertion pass gives the same answer.
inline void select_topk(const float* x, uint32_t c, uint32_t k, TopkScratch& s, int16_t* indices) {
    if (k > 64) {  // insertion costs O(c*k); sort partially in O(c log k)
        s.order.resize(c);
        std::iota(s.order.begin(), s.order.end(), 0u);
        const auto before = [x](uint32_t a, uint32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
        std::partial_sort(s.order.begin(), s.order.begin() + k, s.order.end(), before);
        for (uint32_t j = 0; j < k; ++j) indices[j] = static_cast<int16_t>(s.order[j]);
        return;
    }
    const uint32_t want = std::min(c, k + k / 2 + 4);  // the rank whose value guesses the next threshold
    const uint32_t max_ranked = 4 * k + 16;
    const float t = s.threshold;  // -inf: every class is a candidate
    s.cand.resize(c);
    uint32_t* cand = s.cand.data();
    uint32_t m = 0;
    for (uint32_t i = 0; i < c; ++i) {
        cand[m] = i;
        m += x[i] >= t;
    }
    if (m >= k && m <= max_ranked) {
        s.cand_values.resize(m);
        float* v = s.cand_values.data();
        for (uint32_t j = 0; j < m; ++j) v[j] = x[cand[j]];
        float next = t;  // kept when fewer than `want` candidates
        for (uint32_t i = 0; i < m; ++i) {
            const float vi = v[i];
            uint32_t rank = 0;
            for (uint32_t j = 0; j < i; ++j) rank += v[j] >= vi;
            for (uint32_t j = i + 1; j < m; ++j) rank += v[j] > vi;
            if (rank < k) indices[rank] = static_cast<int16_t>(cand[i]);
            if (rank == want - 1) next = vi;
        }
        s.threshold = next;
        return;
    }
    // Fewer than k candidates (threshold too high) or many: a stable insertion pass.
    const uint32_t n = m >= k ? insertion_select(x, cand, m, want, s) : insertion_select(x, nullptr, c, want, s);
    for (uint32_t j = 0; j < k; ++j) indices[j] = static_cast<int16_t>(s.classes[j]);
    s.threshold = n == want ? s.values[want - 1] : -std::numeric_limits<float>::infinity();
}

// Index of the first non-finite value in x[0, c), or c. Branch-free first pass (vectorises).
inline uint32_t first_non_finite(const float* x, uint32_t c) {
    uint32_t bad = 0;
    for (uint32_t i = 0; i < c; ++i) bad += (f32_bits(x[i]) & 0x7f800000u) == 0x7f800000u;
    if (bad == 0) return c;
    for (uint32_t i = 0; i < c; ++i)
        if ((f32_bits(x[i]) & 0x7f800000u) == 0x7f800000u) return i;
    return c;
}

// Encodes rows x[n][c] (float32 when T is float, float16 bits when T is uint16_t) into
// values[n][k] (float16 bits) and indices[n][k]. Returns the first fault; rows after it are
// not encoded.
template <class T>
EncodeFault encode_rows(const T* x, size_t n, uint32_t c, uint32_t k, uint16_t* values, int16_t* indices) {
    TopkScratch s;
    EncodeFault f;
    for (size_t r = 0; r < n; ++r) {
        const float* row;
        if constexpr (std::is_same_v<T, float>) {
            row = x + r * c;
        } else {
            s.row.resize(c);
            for (uint32_t i = 0; i < c; ++i) s.row[i] = f16_to_f32(x[r * c + i]);
            row = s.row.data();
        }
        const uint32_t bad = first_non_finite(row, c);
        if (bad < c) {
            f.kind = row[bad] != row[bad] ? Fault::kNaN : Fault::kInf;
            f.row = r, f.cls = bad, f.value = row[bad];
            return f;
        }
        int16_t* idx = indices + r * k;
        uint16_t* val = values + r * k;
        select_topk(row, c, k, s, idx);
        for (uint32_t j = 0; j < k; ++j) {
            val[j] = f32_to_f16(row[idx[j]]);
            if (!f16_is_finite(val[j])) {
                f.kind = Fault::kOverflow, f.row = r, f.cls = static_cast<uint32_t>(idx[j]), f.value = row[idx[j]];
                return f;
            }
        }
    }
    return f;
}

// Record layout: values f16[k] at 0, indices i16[k] at 2k, seed i32 at 4k.
enum class RecordStatus : uint8_t { kOk, kUnwritten, kBadIndex };

inline bool record_written(const uint8_t* rec, uint32_t k) {
    return load<int16_t>(rec + 2 * k) != kUnwrittenIndex;
}

// Decodes one record into out[0, c). Preconditions: rec holds record_size bytes, out c floats.
// On kBadIndex, *bad_pos is the position j of the class index outside [0, c).
inline RecordStatus decode_dense_record(const uint8_t* rec, uint32_t k, uint32_t c, float fill, bool zero_fill,
                                        float* out, int32_t* seed, uint32_t* bad_pos) {
    const uint8_t* idx = rec + 2 * k;
    if (load<int16_t>(idx) == kUnwrittenIndex) return RecordStatus::kUnwritten;
    if (zero_fill) std::memset(out, 0, sizeof(float) * c);
    else std::fill_n(out, c, fill);
    for (uint32_t j = 0; j < k; ++j) {
        const uint16_t cls = load<uint16_t>(idx + 2 * j);  // negative i16 -> >= 32768 >= c
        if (cls >= c) {
            *bad_pos = j;
            return RecordStatus::kBadIndex;
        }
        out[cls] = f16_to_f32(load<uint16_t>(rec + 2 * j));
    }
    *seed = load<int32_t>(rec + 4 * k);
    return RecordStatus::kOk;
}

inline RecordStatus decode_topk_record(const uint8_t* rec, uint32_t k, uint32_t c, float* values, int64_t* indices,
                                       int32_t* seed, uint32_t* bad_pos) {
    const uint8_t* idx = rec + 2 * k;
    if (load<int16_t>(idx) == kUnwrittenIndex) return RecordStatus::kUnwritten;
    for (uint32_t j = 0; j < k; ++j) {
        const uint16_t cls = load<uint16_t>(idx + 2 * j);
        if (cls >= c) {
            *bad_pos = j;
            return RecordStatus::kBadIndex;
        }
        indices[j] = cls;
        values[j] = f16_to_f32(load<uint16_t>(rec + 2 * j));
    }
    *seed = load<int32_t>(rec + 4 * k);
    return RecordStatus::kOk;
}

}  // namespace cedstore
