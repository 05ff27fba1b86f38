// Reader and Writer: a store file mapped into memory, and the batch operations on its records.
// No Python here; every method may run with the GIL released. A Reader starts no threads and
// takes no locks, so it stays usable in a child process after fork (the mapping is inherited).
//
// A file truncated by another process while mapped makes any access past the new end raise
// SIGBUS: that is inherent to mmap. Readers and writers compare the file size (fstat) with the
// header at open and before every batch, so the common case is an exception instead.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "format.hpp"

namespace cedstore {

// Closes a file descriptor on scope exit.
struct Fd {
    int fd;
    explicit Fd(int f = -1) : fd(f) {}
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// A whole file mapped with mmap, and its descriptor (for fstat, the writer lock and private
// views); unmapped and closed when the last owner lets go.
class Mapping {
  public:
    Mapping(Fd fd, uint64_t size, bool writable, const std::string& path);
    ~Mapping();
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }
    int fd() const { return fd_.fd; }
    void sync(uint64_t offset, uint64_t length) const;  // msync(MS_SYNC) of the pages covering the range
    // FormatError unless the file (its size now) still has the size it had when mapped: a file
    // truncated under a mapping would SIGBUS on the first access past its new end.
    void check_size() const;

  private:
    Fd fd_;
    uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
    std::string path_;
};

// A private copy-on-write mapping of part of a file: writes change this process's pages only.
class PrivateView {
  public:
    PrivateView(const Mapping& file, uint64_t offset, uint64_t length, const std::string& path);
    ~PrivateView();
    PrivateView(const PrivateView&) = delete;
    PrivateView& operator=(const PrivateView&) = delete;
    uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }

  private:
    uint8_t* base_ = nullptr;  // page-aligned start of the mapping
    uint64_t mapped_ = 0;
    uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
};

// Opens path (never blocking: a FIFO is refused, not waited on), checks all of it
// (parse_header, check_sections) and maps it.
std::pair<std::shared_ptr<Mapping>, Header> open_store(const std::string& path, bool writable);

// The writer lock (FORMAT.md, "Writers"): an exclusive open-file-description lock on the header
// bytes [0, 128). CedStoreError naming path when another writer holds it.
void lock_for_writing(int fd, const std::string& path);
void unlock_for_writing(int fd);

// Values of a batch given as float32, or as float16 bits.
struct FloatArray {
    const void* data;
    bool half;
};

// Shared by Reader and Writer: the checked header and record addressing.
class Store {
  public:
    const std::string& path() const { return path_; }
    const Header& header() const { return h_; }
    const std::shared_ptr<Mapping>& mapping() const { return map_; }
    std::pair<uint32_t, uint32_t> epoch_entry(uint32_t epoch) const;  // (state, crc), read now
    // A writable copy-on-write view of one epoch's records (IndexError, FormatError if truncated).
    std::shared_ptr<PrivateView> private_epoch(int64_t epoch) const;
    KeyTable key_table() const { return KeyTable{map_->data() + h_.keys_offset, h_.num_samples}; }
    std::string metadata() const;
    void written(int64_t epoch, bool* out) const;

  protected:
    Store(std::string path, std::shared_ptr<Mapping> map, const Header& h);
    // IndexError unless 0 <= epoch < E; FormatError if the file was truncated since it was
    // mapped; returns the epoch's first record.
    const uint8_t* epoch_records(int64_t epoch) const;
    const uint64_t* epoch_entry_ptr(uint32_t epoch) const {
        return reinterpret_cast<const uint64_t*>(map_->data() + h_.epoch_table_offset + 8 * uint64_t{epoch});
    }
    // IndexError for the first id outside [0, N).
    void check_ids(int64_t epoch, const int64_t* ids, size_t n) const;

    std::string path_;
    std::shared_ptr<Mapping> map_;
    Header h_;
};

class Reader : public Store {
  public:
    // Maps path read-only and validates it completely (FormatError, UnsupportedVersionError).
    explicit Reader(const std::string& path);

    // out[n][C] and seeds[n]. Raises IndexError, UnwrittenRecordError, IntegrityError.
    void decode_dense(int64_t epoch, const int64_t* ids, size_t n, float fill, float* out, int32_t* seeds) const;
    // values[n][k], indices[n][k], seeds[n]; the same errors.
    void decode_topk(int64_t epoch, const int64_t* ids, size_t n, float* values, int64_t* indices,
                     int32_t* seeds) const;
    // Every record and every sealed epoch's CRC (FORMAT.md, Notes). IntegrityError, or
    // UnwrittenRecordError for a missing record when require_complete. Meant for a file no
    // writer is changing: it reads the records without the rewrite protocol. Every epoch, or
    // only `epoch` when it is not -1 (so that a caller can report progress between epochs).
    void verify(bool require_complete, int64_t epoch = -1) const;
    // FormatError if the file was truncated since it was opened.
    void check_size() const { map_->check_size(); }

  private:
    template <class Decode>
    void for_each_record(int64_t epoch, const int64_t* ids, size_t n, Decode&& decode) const;
    [[noreturn]] void fail_record(int64_t epoch, int64_t id, int status, uint32_t pos, const uint8_t* rec) const;
};

class Writer : public Store {
  public:
    // A new file: header, metadata, key table, open epochs, records filled with 0xFF;
    // index_width 0 (int16 class indices) or 4 (int32).
    // InvalidInputError for bad shapes or keys; OSError (FileExistsError) from the OS.
    static std::unique_ptr<Writer> create(const std::string& path, uint32_t k, uint32_t num_classes,
                                          uint64_t num_samples, uint32_t num_epochs, uint32_t value_kind,
                                          const std::string& metadata, const std::vector<std::string>* keys,
                                          bool overwrite, uint32_t index_width = 0);
    // An existing file, validated like a Reader; every epoch is marked open before returning.
    static std::unique_ptr<Writer> resume(const std::string& path);

    // Encodes dense[n][num_cols] and stores rows with seeds (int32 range). Nothing is written
    // unless the whole batch is valid.
    void write_dense(int64_t epoch, const int64_t* ids, size_t n, FloatArray dense, size_t num_cols,
                     const int64_t* seeds);
    // Stores given top-k rows: values[n][num_cols] non-increasing after fp16 rounding, indices
    // in [0, C) and distinct per row.
    void write_topk(int64_t epoch, const int64_t* ids, size_t n, FloatArray values, size_t num_cols,
                    const int64_t* indices, const int64_t* seeds);
    void written(int64_t epoch, bool* out) const;
    // Waits for writes in flight, then seals each fully written epoch (when seal), flushes and
    // releases the writer lock. Idempotent; later writes raise WriterClosedError.
    void close(bool seal);

  private:
    Writer(std::string path, std::shared_ptr<Mapping> map, const Header& h) : Store(std::move(path), std::move(map), h) {}
    void check_open() const;
    void unlock() const;
    void check_batch(int64_t epoch, const int64_t* ids, size_t n, size_t num_cols, size_t expected_cols,
                     const char* what, const int64_t* seeds) const;
    // Takes mu_ (one batch stores at a time: the rewrite sequence has one writer) and stores.
    void store_records(int64_t epoch, const int64_t* ids, size_t n, const uint16_t* values, const int32_t* indices,
                       const int64_t* seeds);
    std::atomic<bool> closed_{false};
    std::mutex mu_;  // held by store_records and close: close never seals half a batch
};

}  // namespace cedstore
