// Per-row kernels shared by the reader, the writer and encode_topk: encoding (top-k selection
// from topk.hpp, fp16 rounding) and record decoding. Plain loops over raw pointers; callers
// check bounds first.
#pragma once

#include <algorithm>
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
EncodeFault encode_rows(const T* x, size_t n, uint32_t c, uint32_t k, uint16_t* values, int32_t* indices) {
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
        int32_t* idx = indices + r * k;
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

enum class RecordStatus : uint8_t { kOk, kUnwritten, kBadIndex };

// Records in a mapping another process may write are read and written as 4-byte atomics
// (records_offset is a multiple of 4096 and record_size of 4, so every word is aligned).
// indices[0] lives in word indices_offset/4: all of it (int32 indices), or its low half (int16,
// k even) or high half (int16, k odd). A record is unwritten when those bits are all set (-1).
inline uint32_t marker_word(const RecordLayout& l) { return l.indices_offset / 4; }
inline uint32_t marker_mask(const RecordLayout& l) {
    return l.wide ? 0xffffffffu : 0xffffu << (8 * (l.indices_offset % 4));
}
inline bool marker_unwritten(uint32_t word, const RecordLayout& l) { return (word & marker_mask(l)) == marker_mask(l); }

// Whether a record in shared memory is written, with acquire: if it is, the record's other
// bytes, stored before indices[0] with release, are visible.
inline bool record_written(const uint8_t* rec, const RecordLayout& l) {
    return !marker_unwritten(__atomic_load_n(reinterpret_cast<const uint32_t*>(rec) + marker_word(l), __ATOMIC_ACQUIRE), l);
}

// Copies the words of a record out of shared memory: indices[0]'s word first (acquire), then
// the rest (relaxed). Whether the copy is whole is for the caller's sequence check.
inline void copy_record(const uint8_t* src, uint32_t* dst, const RecordLayout& l) {
    const auto* s = reinterpret_cast<const uint32_t*>(src);
    const uint32_t m = marker_word(l), words = l.words();
    dst[m] = __atomic_load_n(s + m, __ATOMIC_ACQUIRE);
    for (uint32_t w = 0; w < m; ++w) dst[w] = __atomic_load_n(s + w, __ATOMIC_RELAXED);
    for (uint32_t w = m + 1; w < words; ++w) dst[w] = __atomic_load_n(s + w, __ATOMIC_RELAXED);
}

// Stores the record image img[words] into shared memory: every other word (relaxed), then the
// word holding indices[0] (release), so no reader sees it written before it is whole.
inline void publish_record(uint8_t* dst, const uint32_t* img, const RecordLayout& l) {
    auto* d = reinterpret_cast<uint32_t*>(dst);
    const uint32_t m = marker_word(l), words = l.words();
    for (uint32_t w = 0; w < m; ++w) __atomic_store_n(d + w, img[w], __ATOMIC_RELAXED);
    for (uint32_t w = m + 1; w < words; ++w) __atomic_store_n(d + w, img[w], __ATOMIC_RELAXED);
    __atomic_store_n(d + m, img[m], __ATOMIC_RELEASE);
}

// The record image of one row (values f16 bits, class indices, seed), padding zero.
// Precondition: img holds l.words() words; every class fits the layout's index type.
inline void fill_record(uint32_t* img, const RecordLayout& l, const uint16_t* values, const int32_t* indices,
                        int32_t seed) {
    auto* b = reinterpret_cast<uint8_t*>(img);
    std::memset(b, 0, l.size);
    std::memcpy(b, values, 2 * l.k);
    if (l.wide) {
        std::memcpy(b + l.indices_offset, indices, 4 * l.k);
    } else {
        for (uint32_t j = 0; j < l.k; ++j) store<int16_t>(b + l.indices_offset + 2 * j, static_cast<int16_t>(indices[j]));
    }
    store<int32_t>(b + l.seed_offset(), seed);
}

// Class index j of a record as stored, sign included (for messages and verify).
inline int64_t stored_class(const uint8_t* rec, const RecordLayout& l, uint32_t j) {
    const uint8_t* p = rec + l.indices_offset + l.index_bytes() * j;
    return l.wide ? int64_t{load<int32_t>(p)} : int64_t{load<int16_t>(p)};
}

// Decodes one record into out[0, c). Index is uint16_t (int16 indices) or uint32_t (int32):
// read unsigned, a negative index is >= 32768 or >= 2^31, beyond any c. Preconditions: rec
// holds the record's bytes, out c floats. On kBadIndex, *bad_pos is the position j of the
// class index outside [0, c).
template <class Index>
inline RecordStatus decode_dense_record(const uint8_t* rec, const RecordLayout& l, uint32_t c, float fill,
                                        bool zero_fill, float* out, int32_t* seed, uint32_t* bad_pos) {
    const uint8_t* idx = rec + l.indices_offset;
    if (load<Index>(idx) == static_cast<Index>(kUnwrittenIndex)) return RecordStatus::kUnwritten;
    if (zero_fill) std::memset(out, 0, sizeof(float) * c);
    else std::fill_n(out, c, fill);
    for (uint32_t j = 0; j < l.k; ++j) {
        const uint32_t cls = load<Index>(idx + sizeof(Index) * j);
        if (cls >= c) {
            *bad_pos = j;
            return RecordStatus::kBadIndex;
        }
        out[cls] = f16_to_f32(load<uint16_t>(rec + 2 * j));
    }
    *seed = load<int32_t>(rec + l.seed_offset());
    return RecordStatus::kOk;
}

template <class Index>
inline RecordStatus decode_topk_record(const uint8_t* rec, const RecordLayout& l, uint32_t c, float* values,
                                       int64_t* indices, int32_t* seed, uint32_t* bad_pos) {
    const uint8_t* idx = rec + l.indices_offset;
    if (load<Index>(idx) == static_cast<Index>(kUnwrittenIndex)) return RecordStatus::kUnwritten;
    for (uint32_t j = 0; j < l.k; ++j) {
        const uint32_t cls = load<Index>(idx + sizeof(Index) * j);
        if (cls >= c) {
            *bad_pos = j;
            return RecordStatus::kBadIndex;
        }
        indices[j] = cls;
        values[j] = f16_to_f32(load<uint16_t>(rec + 2 * j));
    }
    *seed = load<int32_t>(rec + l.seed_offset());
    return RecordStatus::kOk;
}

// Repeated classes in one row. Up to kMaxClasses classes, a slot per class (at most 256 KiB);
// above (C may be 2^24), an open-addressing table of at least 2k slots, so that memory does not
// grow with C. Slots are cleared per row by a generation count: O(1) per class either way.
class RepeatFinder {
  public:
    explicit RepeatFinder(uint32_t num_classes) : direct_(num_classes <= kMaxClasses) {
        if (direct_) resize(num_classes);
    }
    // Starts a row of at most k classes.
    void start(uint32_t k) {
        if (++generation_ == 0) resize(static_cast<uint32_t>(gen_.size()));  // the count wrapped: clear
        if (direct_) return;
        uint32_t slots = 16;
        while (slots < 2 * k) slots *= 2;
        if (slots != gen_.size()) resize(slots);
        mask_ = slots - 1;
    }
    // The position of this row that already holds cls (the caller stops at the first repeat),
    // or -1 after recording cls at position j. Precondition: 0 <= cls < num_classes.
    int64_t add(int64_t cls, uint32_t j) {
        uint32_t h = static_cast<uint32_t>(cls);
        if (!direct_) {
            h = static_cast<uint32_t>((static_cast<uint64_t>(cls) * 0x9E3779B97F4A7C15ull) >> 40) & mask_;
            while (gen_[h] == generation_ && key_[h] != cls) h = (h + 1) & mask_;
            key_[h] = cls;
        }
        if (gen_[h] == generation_) return pos_[h];
        gen_[h] = generation_;
        pos_[h] = j;
        return -1;
    }

  private:
    void resize(uint32_t slots) {
        gen_.assign(slots, 0);
        pos_.assign(slots, 0);
        if (!direct_) key_.assign(slots, 0);
        generation_ = 1;
    }
    bool direct_;
    std::vector<int64_t> key_;  // hashed only: the class in each slot
    std::vector<uint32_t> pos_, gen_;
    uint32_t generation_ = 0, mask_ = 0;
};

}  // namespace cedstore
