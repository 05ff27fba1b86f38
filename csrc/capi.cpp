// cedstore.h on top of Reader: exceptions become status codes and messages.
#include "cedstore.h"

#include <cstring>
#include <new>

#include "store.hpp"

struct cedstore_reader {
    cedstore::Reader reader;
};

namespace {

void set_message(char* err, size_t err_len, const char* message) {
    if (err == nullptr || err_len == 0) return;
    std::strncpy(err, message, err_len - 1);
    err[err_len - 1] = '\0';
}

// Runs f, turning every exception into a status; nothing escapes into C.
template <class F>
cedstore_status guarded(char* err, size_t err_len, F&& f) noexcept {
    try {
        f();
        set_message(err, err_len, "");
        return CEDSTORE_OK;
    } catch (const cedstore::Error& e) {
        set_message(err, err_len, e.what());
        switch (e.kind()) {
            case cedstore::ErrorKind::kFormat: return CEDSTORE_ERR_FORMAT;
            case cedstore::ErrorKind::kUnsupportedVersion: return CEDSTORE_ERR_UNSUPPORTED_VERSION;
            case cedstore::ErrorKind::kIntegrity: return CEDSTORE_ERR_INTEGRITY;
            case cedstore::ErrorKind::kUnwritten: return CEDSTORE_ERR_UNWRITTEN;
            case cedstore::ErrorKind::kIndex: return CEDSTORE_ERR_INDEX;
            case cedstore::ErrorKind::kOS: return CEDSTORE_ERR_OS;
            case cedstore::ErrorKind::kInvalidInput: return CEDSTORE_ERR_INVALID_INPUT;
            default: return CEDSTORE_ERR_INTERNAL;
        }
    } catch (const std::exception& e) {
        set_message(err, err_len, e.what());
        return CEDSTORE_ERR_INTERNAL;
    } catch (...) {
        set_message(err, err_len, "unknown error");
        return CEDSTORE_ERR_INTERNAL;
    }
}

}  // namespace

extern "C" {

cedstore_status cedstore_open(const char* path, cedstore_reader** out, char* err, size_t err_len) {
    return guarded(err, err_len, [&] {
        if (path == nullptr || out == nullptr) cedstore::fail(cedstore::ErrorKind::kInvalidInput, "cedstore_open: NULL argument");
        *out = nullptr;
        *out = new cedstore_reader{cedstore::Reader(path)};
    });
}

void cedstore_shape(const cedstore_reader* reader, uint32_t* k, uint32_t* num_classes, uint64_t* num_samples,
                    uint32_t* num_epochs) {
    const cedstore::Header& h = reader->reader.header();
    if (k != nullptr) *k = h.k;
    if (num_classes != nullptr) *num_classes = h.num_classes;
    if (num_samples != nullptr) *num_samples = h.num_samples;
    if (num_epochs != nullptr) *num_epochs = h.num_epochs;
}

uint32_t cedstore_index_bytes(const cedstore_reader* reader) { return reader->reader.header().layout().index_bytes(); }

cedstore_status cedstore_decode_dense(const cedstore_reader* reader, uint32_t epoch, const int64_t* sample_ids,
                                      size_t n, float fill, float* out, int32_t* seeds_out, char* err,
                                      size_t err_len) {
    return guarded(err, err_len, [&] {
        if (reader == nullptr || (n > 0 && (sample_ids == nullptr || out == nullptr || seeds_out == nullptr)))
            cedstore::fail(cedstore::ErrorKind::kInvalidInput, "cedstore_decode_dense: NULL argument");
        reader->reader.decode_dense(epoch, sample_ids, n, fill, out, seeds_out);
    });
}

void cedstore_close(cedstore_reader* reader) { delete reader; }

}  // extern "C"
