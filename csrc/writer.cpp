// Writer: creating, resuming, filling and sealing a store (FORMAT.md, "Records" and "Epoch table").
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <limits>
#include <numeric>

#include "crc32.hpp"
#include "kernels.hpp"
#include "store.hpp"

namespace cedstore {

namespace {

std::string where(const std::string& path, int64_t epoch, int64_t id, size_t row) {
    return path + ": epoch " + std::to_string(epoch) + ", sample " + std::to_string(id) + " (row " +
           std::to_string(row) + ")";
}

// Checks keys and returns `order` (sample ids sorted by key bytes) and the blob length.
std::vector<uint64_t> sort_keys(const std::vector<std::string>& keys, uint64_t num_samples, uint64_t* blob_length) {
    if (keys.size() != num_samples)
        fail(ErrorKind::kInvalidInput, "keys: expected one per sample (", num_samples, "), found ", keys.size());
    *blob_length = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i].empty()) fail(ErrorKind::kInvalidInput, "keys: the key of sample ", i, " is empty");
        if (!utf8_valid(reinterpret_cast<const uint8_t*>(keys[i].data()), keys[i].size()))
            fail(ErrorKind::kInvalidInput, "keys: the key of sample ", i, " is not valid UTF-8");
        *blob_length += keys[i].size();
    }
    std::vector<uint64_t> order(keys.size());
    std::iota(order.begin(), order.end(), uint64_t{0});
    // std::string compares bytes as unsigned char (memcmp), the order FORMAT.md asks for.
    std::stable_sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) { return keys[a] < keys[b]; });
    for (size_t j = 1; j < order.size(); ++j)
        if (keys[order[j - 1]] == keys[order[j]])
            fail(ErrorKind::kInvalidInput, "keys: duplicate key ", str_repr(keys[order[j]]), " (samples ", order[j - 1],
                 " and ", order[j], ")");
    return order;
}

void fill_key_table(uint8_t* base, const std::vector<std::string>& keys, const std::vector<uint64_t>& order,
                    uint64_t blob_length) {
    const uint64_t n = keys.size();
    store<uint64_t>(base, n);
    store<uint64_t>(base + 8, blob_length);
    uint8_t* blob = base + 24 + 16 * n;
    uint64_t end = 0;
    store<uint64_t>(base + 16, 0);
    for (uint64_t i = 0; i < n; ++i) {
        std::memcpy(blob + end, keys[i].data(), keys[i].size());
        end += keys[i].size();
        store<uint64_t>(base + 16 + 8 * (i + 1), end);
        store<uint64_t>(base + 24 + 8 * n + 8 * i, order[i]);
    }
}

// The epoch table entry (state, crc) as the one 8-byte word readers load.
uint64_t* entry_of(uint8_t* data, const Header& h, uint32_t epoch) {
    return reinterpret_cast<uint64_t*>(data + h.epoch_table_offset + 8 * uint64_t{epoch});
}
uint64_t open_entry(uint32_t sequence) { return (uint64_t{sequence} << 32) | kEpochOpen; }

}  // namespace

std::unique_ptr<Writer> Writer::create(const std::string& path, uint32_t k, uint32_t num_classes, uint64_t num_samples,
                                       uint32_t num_epochs, uint32_t value_kind, const std::string& metadata,
                                       const std::vector<std::string>* keys, bool overwrite, uint32_t index_width) {
    uint64_t blob_length = 0, keys_length = 0;
    std::vector<uint64_t> order;
    if (keys != nullptr) {
        order = sort_keys(*keys, num_samples, &blob_length);
        if (!key_table_length(num_samples, blob_length, &keys_length))
            fail(ErrorKind::kInvalidInput, "keys: the key table does not fit in a 64-bit file size");
    }
    const Header h =
        make_header(k, num_classes, num_samples, num_epochs, value_kind, metadata.size(), keys_length, index_width);

    // Replacing by unlink + create: a Reader still mapping the old file keeps its pages. A
    // Writer still open on the old file would lose every later write: refuse while it holds the
    // writer lock, and hold that lock ourselves until the new file is locked.
    Fd old{overwrite ? ::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC) : -1};
    if (overwrite) {
        struct stat st;
        if (old.fd >= 0 && ::fstat(old.fd, &st) == 0 && S_ISREG(st.st_mode)) lock_for_writing(old.fd, path);
        if (::unlink(path.c_str()) != 0 && errno != ENOENT) fail_os("unlink", path);
    }
    Fd f{::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
    if (f.fd < 0) fail_os("", path);
    try {
        lock_for_writing(f.fd, path);
        // Reserve the blocks now: running out of disk later would be SIGBUS on a mapped write.
        if (const int err = ::posix_fallocate(f.fd, 0, static_cast<off_t>(h.file_size())); err != 0) {
            errno = err;
            fail_os("allocating " + std::to_string(h.file_size()) + " bytes", path);
        }
        auto map = std::make_shared<Mapping>(std::move(f), h.file_size(), true, path);
        uint8_t* d = map->data();  // zero-filled: gaps and the epoch table (all open, crc 0) are done
        std::memcpy(d + kHeaderSize, metadata.data(), metadata.size());
        if (keys != nullptr) fill_key_table(d + h.keys_offset, *keys, order, blob_length);
        std::memset(d + h.records_offset, 0xff, h.records_length);  // every record unwritten
        Header sealed_header = h;
        sealed_header.sections_crc = sections_crc(d, h);
        encode_header(sealed_header, d);  // last: a process killed before this leaves a file without magic
        return std::unique_ptr<Writer>(new Writer(path, std::move(map), sealed_header));
    } catch (...) {
        ::unlink(path.c_str());
        throw;
    }
}

std::unique_ptr<Writer> Writer::resume(const std::string& path) {
    auto [map, h] = open_store(path, true);  // validated exactly like a Reader
    lock_for_writing(map->fd(), path);
    std::unique_ptr<Writer> w(new Writer(path, std::move(map), h));
    for (uint32_t e = 0; e < h.num_epochs; ++e) {
        // Open, in one store per entry. An open epoch keeps its rewrite sequence, made even: a
        // writer killed mid-rewrite left it odd, and no writer is left to finish (we hold the lock).
        uint64_t* entry = entry_of(w->map_->data(), h, e);
        const uint64_t v = __atomic_load_n(entry, __ATOMIC_RELAXED);
        const uint32_t sequence = static_cast<uint32_t>(v) == kEpochOpen ? static_cast<uint32_t>(v >> 32) : 0;
        __atomic_store_n(entry, open_entry(sequence + (sequence & 1u)), __ATOMIC_RELEASE);
    }
    w->map_->sync(h.epoch_table_offset, h.epoch_table_length);  // open on disk before any record changes
    return w;
}

void Writer::check_open() const {
    if (closed_.load()) fail(ErrorKind::kWriterClosed, path_, ": the writer is closed");
}

void Writer::unlock() const { unlock_for_writing(map_->fd()); }

void Writer::written(int64_t epoch, bool* out) const {
    check_open();
    Store::written(epoch, out);
}

void Writer::check_batch(int64_t epoch, const int64_t* ids, size_t n, size_t num_cols, size_t expected_cols,
                         const char* what, const int64_t* seeds) const {
    check_open();
    epoch_records(epoch);
    if (num_cols != expected_cols)
        fail(ErrorKind::kInvalidInput, path_, ": ", what, ": expected ", expected_cols, " columns (",
             expected_cols == h_.k ? "k" : "num_classes", "), found ", num_cols);
    check_ids(epoch, ids, n);
    std::vector<std::pair<int64_t, size_t>> sorted(n);
    for (size_t r = 0; r < n; ++r) sorted[r] = {ids[r], r};
    std::sort(sorted.begin(), sorted.end());
    for (size_t j = 1; j < n; ++j)
        if (sorted[j].first == sorted[j - 1].first)
            fail(ErrorKind::kInvalidInput, path_, ": epoch ", epoch, ": sample id ", sorted[j].first,
                 " appears twice in one batch (rows ", sorted[j - 1].second, " and ", sorted[j].second, ")");
    for (size_t r = 0; r < n; ++r)
        if (seeds[r] < std::numeric_limits<int32_t>::min() || seeds[r] > std::numeric_limits<int32_t>::max())
            fail(ErrorKind::kInvalidInput, where(path_, epoch, ids[r], r), ": seed ", seeds[r], " outside the int32 range");
}

void Writer::store_records(int64_t epoch, const int64_t* ids, size_t n, const uint16_t* values, const int32_t* indices,
                           const int64_t* seeds) {
    std::lock_guard<std::mutex> guard(mu_);
    if (closed_.load()) fail(ErrorKind::kWriterClosed, path_, ": the writer is closed (closed while this write waited)");
    const RecordLayout l = h_.layout();
    const uint32_t k = l.k, rs = l.size, m = marker_word(l);
    uint8_t* base = const_cast<uint8_t*>(epoch_records(epoch));  // checks the file size
    uint64_t* entry = entry_of(map_->data(), h_, static_cast<uint32_t>(epoch));
    std::vector<uint32_t> image(l.words());
    for (size_t r = 0; r < n; ++r) {
        // Precondition: 0 <= ids[r] < N (check_batch; ids is the caller's own copy).
        fill_record(image.data(), l, values + r * k, indices + r * k, static_cast<int32_t>(seeds[r]));
        uint8_t* rec = base + ids[r] * rs;
        auto* marker = reinterpret_cast<uint32_t*>(rec) + m;
        const uint32_t current = __atomic_load_n(marker, __ATOMIC_RELAXED);
        const bool rewrite = !marker_unwritten(current, l);
        uint32_t sequence = 0;
        if (rewrite) {  // FORMAT.md, "Rewriting a record": sequence odd, unwritten, record, sequence even
            sequence = static_cast<uint32_t>(__atomic_load_n(entry, __ATOMIC_RELAXED) >> 32) + 1;
            __atomic_store_n(entry, open_entry(sequence), __ATOMIC_RELAXED);
            std::atomic_thread_fence(std::memory_order_release);
            __atomic_store_n(marker, current | marker_mask(l), __ATOMIC_RELAXED);  // indices[0] = -1
            std::atomic_thread_fence(std::memory_order_release);
        }
        publish_record(rec, image.data(), l);  // indices[0] last: never half-written and read as written
        if (rewrite) __atomic_store_n(entry, open_entry(sequence + 1), __ATOMIC_RELEASE);
    }
}

void Writer::write_dense(int64_t epoch, const int64_t* ids, size_t n, FloatArray dense, size_t num_cols,
                         const int64_t* seeds) {
    check_batch(epoch, ids, n, num_cols, h_.num_classes, "dense", seeds);
    const uint32_t k = h_.k, c = h_.num_classes;
    std::vector<uint16_t> values(n * k);
    std::vector<int32_t> indices(n * k);
    const EncodeFault f =
        dense.half ? encode_rows(static_cast<const uint16_t*>(dense.data), n, c, k, values.data(), indices.data())
                   : encode_rows(static_cast<const float*>(dense.data), n, c, k, values.data(), indices.data());
    if (f.kind != Fault::kNone)
        fail(ErrorKind::kInvalidInput, where(path_, epoch, ids[f.row], f.row), ": dense[", f.row, ", ", f.cls,
             "] = ", f.value, " is ", fault_text(f.kind));
    store_records(epoch, ids, n, values.data(), indices.data(), seeds);
}

void Writer::write_topk(int64_t epoch, const int64_t* ids, size_t n, FloatArray values, size_t num_cols,
                        const int64_t* indices, const int64_t* seeds) {
    check_batch(epoch, ids, n, num_cols, h_.k, "values", seeds);
    const uint32_t k = h_.k, c = h_.num_classes;
    std::vector<uint16_t> vals(n * k);
    std::vector<int32_t> idx(n * k);
    RepeatFinder repeats(c);
    for (size_t r = 0; r < n; ++r) {
        const auto bad = [&](auto... parts) { fail(ErrorKind::kInvalidInput, where(path_, epoch, ids[r], r), ": ", parts...); };
        repeats.start(k);
        for (uint32_t j = 0; j < k; ++j) {
            const size_t at = r * k + j;
            uint16_t h;
            if (values.half) {
                h = static_cast<const uint16_t*>(values.data)[at];
                if (!f16_is_finite(h)) bad("values[", r, ", ", j, "] = ", f16_to_f32(h), " is ", fault_text(Fault::kInf));
            } else {
                const float x = static_cast<const float*>(values.data)[at];
                if ((f32_bits(x) & 0x7f800000u) == 0x7f800000u)
                    bad("values[", r, ", ", j, "] = ", x, " is ", fault_text(x != x ? Fault::kNaN : Fault::kInf));
                h = f32_to_f16(x);
                if (!f16_is_finite(h)) bad("values[", r, ", ", j, "] = ", x, " is ", fault_text(Fault::kOverflow));
            }
            if (j > 0 && f16_to_f32(h) > f16_to_f32(vals[at - 1]))
                bad("values must be non-increasing after float16 rounding, found values[", r, ", ", j - 1,
                    "] = ", f16_to_f32(vals[at - 1]), " < values[", r, ", ", j, "] = ", f16_to_f32(h));
            const int64_t cls = indices[at];
            if (cls < 0 || cls >= static_cast<int64_t>(c))
                bad("indices[", r, ", ", j, "] = ", cls, " outside [0, ", c, ")");
            const int64_t earlier = repeats.add(cls, j);
            if (earlier >= 0) bad("indices[", r, ", ", j, "] = ", cls, " repeats indices[", r, ", ", earlier, "]");
            vals[at] = h;
            idx[at] = static_cast<int32_t>(cls);
        }
    }
    store_records(epoch, ids, n, vals.data(), idx.data(), seeds);
}

void Writer::close(bool seal) {
    std::lock_guard<std::mutex> guard(mu_);  // a batch in flight finishes first
    if (closed_.exchange(true)) return;
    std::vector<std::pair<uint32_t, uint32_t>> seals;  // (epoch, crc) of the fully written epochs
    if (seal) {
        const RecordLayout l = h_.layout();
        for (uint32_t e = 0; e < h_.num_epochs; ++e) {
            const uint8_t* base = epoch_records(e);
            bool complete = true;
            for (uint64_t i = 0; i < h_.num_samples && complete; ++i)
                complete = record_written(base + i * h_.record_size, l);
            if (complete) seals.emplace_back(e, crc32(base, h_.epoch_bytes()));
        }
    }
    map_->sync(0, map_->size());  // records on disk before the seals that cover them
    for (const auto& [e, crc] : seals)
        __atomic_store_n(entry_of(map_->data(), h_, e), (uint64_t{crc} << 32) | kEpochSealed, __ATOMIC_RELEASE);
    if (!seals.empty()) map_->sync(h_.epoch_table_offset, h_.epoch_table_length);
    unlock();
}

}  // namespace cedstore
