/* The plain C API of cedstore: open a store read-only and decode batches of records into dense
 * float32 targets. For loaders written in C, C++ or any language with a C FFI. The symbols are
 * exported from the cedstore._core shared object.
 *
 * Every function that can fail returns a cedstore_status and, when err is not NULL, writes a
 * NUL-terminated message of at most err_len bytes (truncated) naming the file, epoch and sample.
 * A handle may be used from several threads at once and in a child process after fork. Arrays
 * passed in must not change during the call (the Python bindings pass copies they own).
 *
 * Example:
 *     char err[512];
 *     cedstore_reader* r;
 *     if (cedstore_open("teacher.ced", &r, err, sizeof err) != CEDSTORE_OK) { puts(err); return 1; }
 *     int64_t ids[2] = {3, 7};
 *     float targets[2 * 527]; int32_t seeds[2];
 *     cedstore_decode_dense(r, 0, ids, 2, 0.0f, targets, seeds, err, sizeof err);
 *     cedstore_close(r);
 */
#ifndef CEDSTORE_H
#define CEDSTORE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define CEDSTORE_API
#else
#define CEDSTORE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin: the declarations below are plain C that cffi's cdef parses (CEDSTORE_API removed). */
typedef struct cedstore_reader cedstore_reader;

typedef enum {
    CEDSTORE_OK = 0,
    CEDSTORE_ERR_FORMAT = 1,              /* not a store, or a malformed header / key table */
    CEDSTORE_ERR_UNSUPPORTED_VERSION = 2, /* written by a newer format version */
    CEDSTORE_ERR_INTEGRITY = 3,           /* a record is corrupted */
    CEDSTORE_ERR_UNWRITTEN = 4,           /* the record was never written */
    CEDSTORE_ERR_INVALID_INPUT = 6,       /* bad arguments (a NULL pointer) */
    CEDSTORE_ERR_INDEX = 7,               /* epoch or sample id out of range */
    CEDSTORE_ERR_OS = 8,                  /* the file could not be opened or mapped */
    CEDSTORE_ERR_INTERNAL = 99            /* out of memory or a bug */
} cedstore_status;

/* Maps and validates the file at path; *out receives a handle for cedstore_close. */
CEDSTORE_API cedstore_status cedstore_open(const char* path, cedstore_reader** out, char* err, size_t err_len);

/* The store's shape: values per record, classes, samples, epochs. Any pointer may be NULL. */
CEDSTORE_API void cedstore_shape(const cedstore_reader* reader, uint32_t* k, uint32_t* num_classes,
                                 uint64_t* num_samples, uint32_t* num_epochs);

/* Bytes per stored class index: 2 (int16, stores of at most 32767 classes) or 4 (int32, the wide
 * layout of format 1.2). Decoding is the same for both; this is for tools that read records raw. */
CEDSTORE_API uint32_t cedstore_index_bytes(const cedstore_reader* reader);

/* Decodes records (epoch, sample_ids[i]) for i < n into out[n][num_classes] (fill outside the
 * top-k) and seeds_out[n]. */
CEDSTORE_API cedstore_status cedstore_decode_dense(const cedstore_reader* reader, uint32_t epoch,
                                                   const int64_t* sample_ids, size_t n, float fill, float* out,
                                                   int32_t* seeds_out, char* err, size_t err_len);

/* Unmaps the file. NULL is allowed. */
CEDSTORE_API void cedstore_close(cedstore_reader* reader);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* CEDSTORE_H */
