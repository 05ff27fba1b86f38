// Per-row kernels shared by the reader, the writer and encode_topk: encoding (top-k selection
// from topk.hpp, fp16 rounding) and record decoding. Plain loops over raw pointers; callers
// check bounds first.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "format.hpp"
#include "fp16.hpp"
#include "topk.hpp"

namespace cedstore {

enum class Fault : uint8_t { kNone, kNaN, kInf, kOverflow };

// The first problem found while encoding a batch.
struct EncodeFault {
    Fault kind = Fault::kNone;
    size_t row = 0;
    uint32_t cls = 0;
    float value = 0.0f;
};

// What is wrong with the value, for messages: "dense[0, 3] = nan is NaN; values must be finite".
inline const char* fault_text(Fault f) {
    switch (f) {
        case Fault::kNaN: return "NaN; values must be finite";
        case Fault::kInf: return "infinite; values must be finite";
        case Fault::kOverflow: return "outside the float16 range (|x| < 65520), it would be stored as Inf";
        default: return "fine";
    }
}

// Index of the first non-finite value in x[0, c), or c.
inline uint32_t first_non_finite(const float* x, uint32_t c) {
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
    std::vector<float> converted;  // a float16 row as float32
    EncodeFault f;
    for (size_t r = 0; r < n; ++r) {
        const float* row;
        if constexpr (std::is_same_v<T, float>) {
            row = x + r * c;
        } else {
            converted.resize(c);
            for (uint32_t i = 0; i < c; ++i) converted[i] = f16_to_f32(x[r * c + i]);
            row = converted.data();
        }
        int16_t* idx = indices + r * k;
        if (!select_topk(row, c, k, s, idx)) {  // some value is NaN or infinite
            const uint32_t bad = first_non_finite(row, c);
            f.kind = row[bad] != row[bad] ? Fault::kNaN : Fault::kInf;
            f.row = r, f.cls = bad, f.value = row[bad];
            return f;
        }
        uint16_t* val = values + r * k;
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

// Records in a mapping another process may write are read and written as 4-byte atomics
// (records_offset is a multiple of 4096 and record_size of 4, so every word is aligned).
// indices[0] lives in word 2k/4: the low half when k is even, the high half when k is odd.
inline uint32_t marker_word(uint32_t k) { return k / 2; }
inline int16_t marker_of(uint32_t word, uint32_t k) { return static_cast<int16_t>(k % 2 ? word >> 16 : word & 0xffffu); }
inline uint32_t with_marker(uint32_t word, int16_t marker, uint32_t k) {
    const uint32_t m = static_cast<uint16_t>(marker);
    return k % 2 ? (word & 0xffffu) | (m << 16) : (word & 0xffff0000u) | m;
}

// indices[0] of a record in shared memory, with acquire: if it is not -1, the record's other
// bytes, stored before it with release, are visible.
inline int16_t load_marker(const uint8_t* rec, uint32_t k) {
    return marker_of(__atomic_load_n(reinterpret_cast<const uint32_t*>(rec) + marker_word(k), __ATOMIC_ACQUIRE), k);
}

inline bool record_written(const uint8_t* rec, uint32_t k) { return load_marker(rec, k) != kUnwrittenIndex; }

// Copies the k + 1 words of a record out of shared memory: indices[0]'s word first (acquire),
// then the rest (relaxed). Whether the copy is whole is for the caller's sequence check.
inline void copy_record(const uint8_t* src, uint32_t* dst, uint32_t k) {
    const auto* s = reinterpret_cast<const uint32_t*>(src);
    const uint32_t m = marker_word(k);
    dst[m] = __atomic_load_n(s + m, __ATOMIC_ACQUIRE);
    for (uint32_t w = 0; w < m; ++w) dst[w] = __atomic_load_n(s + w, __ATOMIC_RELAXED);
    for (uint32_t w = m + 1; w <= k; ++w) dst[w] = __atomic_load_n(s + w, __ATOMIC_RELAXED);
}

// Stores the record image img[k + 1] into shared memory: every other word (relaxed), then the
// word holding indices[0] (release), so no reader sees it written before it is whole.
inline void publish_record(uint8_t* dst, const uint32_t* img, uint32_t k) {
    auto* d = reinterpret_cast<uint32_t*>(dst);
    const uint32_t m = marker_word(k);
    for (uint32_t w = 0; w < m; ++w) __atomic_store_n(d + w, img[w], __ATOMIC_RELAXED);
    for (uint32_t w = m + 1; w <= k; ++w) __atomic_store_n(d + w, img[w], __ATOMIC_RELAXED);
    __atomic_store_n(d + m, img[m], __ATOMIC_RELEASE);
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
