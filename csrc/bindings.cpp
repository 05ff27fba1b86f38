// cedstore._core: the only file that sees Python. Arguments are checked and outputs allocated
// with the GIL held; every loop over records runs in the C++ core with the GIL released.
// Arrays the GIL-free loop reads are first copied into memory the call owns: another thread
// may change the caller's arrays as soon as the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "crc32.hpp"
#include "kernels.hpp"
#include "store.hpp"

namespace py = pybind11;
using cedstore::ErrorKind;
using cedstore::fail;

namespace {

// ---------------------------------------------------------------------------------------------
// Argument conversion. Messages name the argument and say what was expected and found.

std::string describe(const py::array& a) {
    return std::to_string(a.ndim()) + "-d " + py::str(a.dtype()).cast<std::string>();
}

py::array as_array(const py::handle& obj, const char* name) {
    if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);  // the common case, no conversion
    py::array a = py::array::ensure(obj);
    if (!a) fail(ErrorKind::kInvalidInput, name, ": expected an array, found ", py::str(py::type::of(obj)).cast<std::string>());
    return a;
}

// Any integer array of the given ndim, as C-contiguous int64 (an empty list counts as integers).
py::array_t<int64_t> int64_array(const py::handle& obj, const char* name, int ndim) {
    using Int64Array = py::array_t<int64_t, py::array::c_style>;
    if (py::isinstance<Int64Array>(obj)) {  // already C-contiguous int64: no conversion
        auto a = py::reinterpret_borrow<py::array_t<int64_t>>(obj);
        if (a.ndim() == ndim) return a;
    }
    py::array a = as_array(obj, name);
    const char kind = a.dtype().kind();
    if (a.ndim() != ndim || ((kind != 'i' && kind != 'u') && a.size() != 0))
        fail(ErrorKind::kInvalidInput, name, ": expected a ", ndim, "-d integer array, found ", describe(a));
    return py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
}

// A copy of a 1-d integer array as int64, owned by the call.
std::vector<int64_t> int64_copy(const py::handle& obj, const char* name) {
    auto a = int64_array(obj, name, 1);
    return std::vector<int64_t>(a.data(), a.data() + a.size());
}

// A C-contiguous copy of any array, owned by the call (pybind11 copies when given no base).
py::array own_copy(const py::array& a) {
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    return py::array(a.dtype(), shape, a.data());
}

// The bytes [first, last) an array's elements span, or an empty range.
std::pair<uintptr_t, uintptr_t> byte_extent(const py::array& a) {
    if (a.size() == 0) return {0, 0};
    auto lo = reinterpret_cast<uintptr_t>(a.data()), hi = lo;
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        const py::ssize_t span = (a.shape(d) - 1) * a.strides(d);
        if (span < 0) lo -= static_cast<uintptr_t>(-span);
        else hi += static_cast<uintptr_t>(span);
    }
    return {lo, hi + static_cast<uintptr_t>(a.itemsize())};
}

bool overlap(const py::array& a, const py::handle& b) {
    if (!py::isinstance<py::array>(b)) return false;  // a list: converted into new memory
    const auto x = byte_extent(a), y = byte_extent(py::reinterpret_borrow<py::array>(b));
    return x.first < y.second && y.first < x.second;
}

// InvalidInputError for a path with a NUL byte, which the OS would cut the path at (as
// Python's own open() refuses it).
const std::string& checked_path(const std::string& path) {
    const size_t nul = path.find('\0');
    if (nul != std::string::npos)
        fail(ErrorKind::kInvalidInput, "path ", py::repr(py::str(path)).cast<std::string>(),
             ": embedded null byte at position ", nul);
    return path;
}

// A 2-d float32 or float16 array, C-contiguous (copied only when it is not).
py::array float_matrix(const py::handle& obj, const char* name) {
    py::array a = as_array(obj, name);
    const bool ok = a.dtype().equal(py::dtype::of<float>()) || a.dtype().equal(py::dtype("float16"));
    if (a.ndim() != 2 || !ok) fail(ErrorKind::kInvalidInput, name, ": expected a 2-d float32 or float16 array, found ", describe(a));
    if (!(a.flags() & py::array::c_style)) a = py::module_::import("numpy").attr("ascontiguousarray")(a);
    return a;
}

cedstore::FloatArray floats(const py::array& a) { return {a.data(), a.itemsize() == 2}; }

void check_rows(const py::array& a, py::ssize_t rows, const char* name, const char* of) {
    if (a.shape(0) != rows)
        fail(ErrorKind::kInvalidInput, name, ": expected ", rows, " rows (one per ", of, "), found ", a.shape(0));
}

uint32_t u32(int64_t v, const char* name) {
    if (v < 0 || v > std::numeric_limits<uint32_t>::max())
        fail(ErrorKind::kInvalidInput, name, ": expected a value in [0, 2**32), found ", v);
    return static_cast<uint32_t>(v);
}

py::array_t<float> new_matrix(size_t rows, size_t cols) {
    return py::array_t<float>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

// ---------------------------------------------------------------------------------------------
// Exceptions: cedstore::Error -> the classes of cedstore/errors.py, IndexError, OSError.

void translate(std::exception_ptr p) {
    try {
        if (p) std::rethrow_exception(p);
    } catch (const cedstore::Error& e) {
        if (e.kind() == ErrorKind::kIndex) return PyErr_SetString(PyExc_IndexError, e.what());
        if (e.kind() == ErrorKind::kOS) {  // OSError(errno, ...) picks FileNotFoundError etc.
            py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(
                PyExc_OSError, "isN", e.os_errno(), e.detail().c_str(), PyUnicode_DecodeFSDefault(e.filename().c_str())));
            if (exc) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
            return;
        }
        const char* name = "CedStoreError";
        switch (e.kind()) {
            case ErrorKind::kFormat: name = "FormatError"; break;
            case ErrorKind::kUnsupportedVersion: name = "UnsupportedVersionError"; break;
            case ErrorKind::kIntegrity: name = "IntegrityError"; break;
            case ErrorKind::kUnwritten: name = "UnwrittenRecordError"; break;
            case ErrorKind::kWriterClosed: name = "WriterClosedError"; break;
            case ErrorKind::kInvalidInput: name = "InvalidInputError"; break;
            default: break;
        }
        try {
            py::object cls = py::module_::import("cedstore.errors").attr(name);
            PyErr_SetString(cls.ptr(), e.what());
        } catch (py::error_already_set&) {  // cedstore.errors unimportable: still a ValueError
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

// Keeps a mapping alive for the memoryviews returned by Reader.buffer().
struct MappingView {
    std::shared_ptr<cedstore::Mapping> map;
};

// Keeps a private copy-on-write mapping alive for the writable memoryviews of private_records().
struct PrivateMappingView {
    std::shared_ptr<cedstore::PrivateView> view;
};

struct PyReader {
    std::shared_ptr<const cedstore::Reader> reader;  // null once closed
    std::string path;
    cedstore::Header h;

    explicit PyReader(const std::string& p) : path(checked_path(p)) {
        {
            py::gil_scoped_release release;  // validation reads the whole key table
            reader = std::make_shared<const cedstore::Reader>(p);
        }
        h = reader->header();
    }
    // A reference for one call: close() in another thread cannot unmap under it.
    std::shared_ptr<const cedstore::Reader> get() const {
        if (!reader) fail(ErrorKind::kClosed, path, ": the reader is closed");
        return reader;
    }
    cedstore::KeyTable keys_or_fail(const cedstore::Reader& r) const {
        if (!h.has_keys()) fail(ErrorKind::kFormat, path, ": the store has no key table");
        return r.key_table();
    }

    py::tuple decode_dense(int64_t epoch, const py::handle& sample_ids, float fill, const py::object& out) const {
        auto r = get();
        const std::vector<int64_t> ids = int64_copy(sample_ids, "sample_ids");
        const size_t n = ids.size(), c = h.num_classes;
        py::array target;
        if (out.is_none()) {
            target = new_matrix(n, c);
        } else {
            target = as_array(out, "out");
            if (!target.dtype().equal(py::dtype::of<float>()) || target.ndim() != 2 || target.shape(0) != py::ssize_t(n) ||
                target.shape(1) != py::ssize_t(c) || !(target.flags() & py::array::c_style) || !target.writeable())
                fail(ErrorKind::kInvalidInput, "out: expected a C-contiguous writable float32 array of shape (", n, ", ",
                     c, "), found ", describe(target), " of shape (", target.ndim() > 0 ? target.shape(0) : 0,
                     target.ndim() > 1 ? ", " + std::to_string(target.shape(1)) : std::string(), ")");
            if (overlap(target, sample_ids))
                fail(ErrorKind::kInvalidInput, "out: shares memory with sample_ids; pass an array of its own");
        }
        py::array_t<int32_t> seeds(static_cast<py::ssize_t>(n));
        float* t = static_cast<float*>(target.mutable_data());
        int32_t* s = seeds.mutable_data();
        {
            py::gil_scoped_release release;
            r->decode_dense(epoch, ids.data(), n, fill, t, s);
        }
        return py::make_tuple(target, seeds);
    }

    py::tuple decode_topk(int64_t epoch, const py::handle& sample_ids) const {
        auto r = get();
        const std::vector<int64_t> ids = int64_copy(sample_ids, "sample_ids");
        const auto n = static_cast<py::ssize_t>(ids.size()), k = static_cast<py::ssize_t>(h.k);
        py::array_t<float> values({n, k});
        py::array_t<int64_t> indices({n, k});
        py::array_t<int32_t> seeds(n);
        float* v = values.mutable_data();
        int64_t* i = indices.mutable_data();
        int32_t* s = seeds.mutable_data();
        {
            py::gil_scoped_release release;
            r->decode_topk(epoch, ids.data(), static_cast<size_t>(n), v, i, s);
        }
        return py::make_tuple(values, indices, seeds);
    }
};

template <class Store>
py::array_t<bool> written(const Store& store, int64_t epoch) {
    py::array_t<bool> out(static_cast<py::ssize_t>(store.header().num_samples));
    bool* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        store.written(epoch, o);
    }
    return out;
}

py::list epoch_table(const cedstore::Store& store) {
    py::list out;
    for (uint32_t e = 0; e < store.header().num_epochs; ++e) {
        const auto [state, crc] = store.epoch_entry(e);
        out.append(py::make_tuple(state, crc));
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

struct PyWriter {
    std::shared_ptr<cedstore::Writer> writer;  // null once closed
    std::string path;
    cedstore::Header h;

    explicit PyWriter(std::unique_ptr<cedstore::Writer> w) : writer(std::move(w)), path(writer->path()), h(writer->header()) {}
    std::shared_ptr<cedstore::Writer> get() const {
        if (!writer) fail(ErrorKind::kWriterClosed, path, ": the writer is closed");
        return writer;
    }

    static PyWriter create(const std::string& path, int64_t k, int64_t num_classes, int64_t num_samples, int64_t num_epochs,
                           int64_t value_kind, const py::bytes& metadata_json, const py::object& keys, bool overwrite,
                           int64_t index_width) {
        checked_path(path);
        if (num_samples < 0) fail(ErrorKind::kInvalidInput, "num_samples: expected >= 1, found ", num_samples);
        std::vector<std::string> key_bytes;
        if (!keys.is_none()) {
            for (const py::handle& key : keys) {
                if (!PyUnicode_Check(key.ptr()))
                    fail(ErrorKind::kInvalidInput, "keys: expected str, found ", py::str(py::type::of(key)).cast<std::string>(),
                         " for sample ", key_bytes.size());
                Py_ssize_t size = 0;
                const char* utf8 = PyUnicode_AsUTF8AndSize(key.ptr(), &size);
                if (utf8 == nullptr) {  // lone surrogates
                    PyErr_Clear();
                    fail(ErrorKind::kInvalidInput, "keys: the key of sample ", key_bytes.size(), " is not valid UTF-8");
                }
                key_bytes.emplace_back(utf8, static_cast<size_t>(size));
            }
        }
        const std::string metadata = metadata_json;
        const uint32_t k32 = u32(k, "k"), c32 = u32(num_classes, "num_classes"), e32 = u32(num_epochs, "num_epochs"),
                       v32 = u32(value_kind, "value_kind"), w32 = u32(index_width, "index_width");
        std::unique_ptr<cedstore::Writer> w;
        {
            py::gil_scoped_release release;  // fills the records with 0xFF
            w = cedstore::Writer::create(path, k32, c32, static_cast<uint64_t>(num_samples), e32, v32, metadata,
                                         keys.is_none() ? nullptr : &key_bytes, overwrite, w32);
        }
        return PyWriter(std::move(w));
    }

    static PyWriter resume(const std::string& path) {
        checked_path(path);
        std::unique_ptr<cedstore::Writer> w;
        {
            py::gil_scoped_release release;
            w = cedstore::Writer::resume(path);
        }
        return PyWriter(std::move(w));
    }

    void write_dense(int64_t epoch, const py::handle& sample_ids, const py::handle& dense, const py::handle& seeds) {
        auto w = get();
        const std::vector<int64_t> ids = int64_copy(sample_ids, "sample_ids");
        const py::array x = own_copy(float_matrix(dense, "dense"));
        const std::vector<int64_t> s = int64_copy(seeds, "seeds");
        const auto n = static_cast<py::ssize_t>(ids.size());
        check_rows(x, n, "dense", "sample id");
        if (static_cast<py::ssize_t>(s.size()) != n)
            fail(ErrorKind::kInvalidInput, "seeds: expected ", n, " rows (one per sample id), found ", s.size());
        const cedstore::FloatArray values = floats(x);  // raw pointers only below: no Python
        py::gil_scoped_release release;
        w->write_dense(epoch, ids.data(), ids.size(), values, static_cast<size_t>(x.shape(1)), s.data());
    }

    void write_topk(int64_t epoch, const py::handle& sample_ids, const py::handle& values, const py::handle& indices,
                    const py::handle& seeds) {
        auto w = get();
        const std::vector<int64_t> ids = int64_copy(sample_ids, "sample_ids");
        const py::array v = own_copy(float_matrix(values, "values"));
        const py::array_t<int64_t> i = own_copy(int64_array(indices, "indices", 2));
        const std::vector<int64_t> s = int64_copy(seeds, "seeds");
        const auto n = static_cast<py::ssize_t>(ids.size());
        check_rows(v, n, "values", "sample id");
        if (static_cast<py::ssize_t>(s.size()) != n)
            fail(ErrorKind::kInvalidInput, "seeds: expected ", n, " rows (one per sample id), found ", s.size());
        if (i.shape(0) != v.shape(0) || i.shape(1) != v.shape(1))
            fail(ErrorKind::kInvalidInput, "indices: expected the shape of values (", v.shape(0), ", ", v.shape(1),
                 "), found (", i.shape(0), ", ", i.shape(1), ")");
        const auto k = static_cast<size_t>(v.shape(1));
        const cedstore::FloatArray vals = floats(v);  // raw pointers only below: no Python
        const int64_t* cls = i.data();
        py::gil_scoped_release release;
        w->write_topk(epoch, ids.data(), ids.size(), vals, k, cls, s.data());
    }

    void close(bool seal) {
        if (!writer) return;
        auto w = std::move(writer);
        py::gil_scoped_release release;
        w->close(seal);
    }
};

// ---------------------------------------------------------------------------------------------
// Free functions

uint32_t crc32(const py::buffer& data, uint32_t value) {
    py::buffer_info info = data.request();  // C-contiguous bytes-like (PyBUF_SIMPLE)
    const auto* p = static_cast<const uint8_t*>(info.ptr);
    const size_t n = static_cast<size_t>(info.size * info.itemsize);
    py::gil_scoped_release release;
    return cedstore::crc32(p, n, value);
}

py::tuple encode_topk(const py::handle& dense, int64_t k) {
    py::array x = float_matrix(dense, "dense");
    const auto n = x.shape(0), c = x.shape(1);
    if (c > cedstore::kMaxClassesWide)
        fail(ErrorKind::kInvalidInput, "dense: expected at most ", cedstore::kMaxClassesWide, " classes, found ", c);
    if (k < 1 || k > c) fail(ErrorKind::kInvalidInput, "k: expected 1 <= k <= num_classes (", c, "), found ", k);
    py::array values(py::dtype("float16"), {n, static_cast<py::ssize_t>(k)});
    py::array_t<int32_t> indices({n, static_cast<py::ssize_t>(k)});
    auto* v = static_cast<uint16_t*>(values.mutable_data());
    int32_t* i = indices.mutable_data();
    const bool half = x.itemsize() == 2;
    const void* data = x.data();
    cedstore::EncodeFault f;
    {
        py::gil_scoped_release release;
        const auto c32 = static_cast<uint32_t>(c), k32 = static_cast<uint32_t>(k);
        f = half ? cedstore::encode_rows(static_cast<const uint16_t*>(data), size_t(n), c32, k32, v, i)
                 : cedstore::encode_rows(static_cast<const float*>(data), size_t(n), c32, k32, v, i);
    }
    if (f.kind != cedstore::Fault::kNone)
        fail(ErrorKind::kInvalidInput, "dense[", f.row, ", ", f.cls, "] = ", f.value, " (row ", f.row, ", class ", f.cls,
             ") is ", cedstore::fault_text(f.kind));
    if (c <= cedstore::kMaxClasses) return py::make_tuple(values, indices.attr("astype")("int16"));  // as stored
    return py::make_tuple(values, indices);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "The C++ core of cedstore (see cedstore/_core.pyi for the contract).";
    py::register_exception_translator(&translate);

    m.attr("MAGIC") = py::bytes(cedstore::kMagic, 8);
    m.attr("FORMAT_VERSION") = cedstore::kFormatVersion;
    m.attr("FORMAT_MINOR_VERSION") = cedstore::kFormatMinorVersion;
    m.attr("MAX_METADATA_LENGTH") = cedstore::kMaxMetadataLength;
    m.attr("HEADER_SIZE") = cedstore::kHeaderSize;
    m.attr("RECORDS_ALIGN") = cedstore::kRecordsAlign;
    m.attr("SECTION_ALIGN") = cedstore::kSectionAlign;
    m.attr("MAX_CLASSES") = cedstore::kMaxClasses;
    m.attr("MAX_CLASSES_WIDE") = cedstore::kMaxClassesWide;
    m.attr("UNWRITTEN_INDEX") = cedstore::kUnwrittenIndex;

    m.def("crc32", &crc32, py::arg("data"), py::arg("value") = 0, "CRC-32 (zlib's), continuing from value.");
    m.def("encode_topk", &encode_topk, py::arg("dense"), py::arg("k"),
          "Top-k of each row of float32 or float16 [B, C]: (values float16 [B, k], indices [B, k]: int16 for "
          "C <= 32767, else int32).");

    py::class_<MappingView>(m, "_MappingView", py::buffer_protocol()).def_buffer([](MappingView& v) {
        return py::buffer_info(v.map->data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(v.map->size())}, {py::ssize_t{1}}, /*readonly=*/true);
    });

    py::class_<PrivateMappingView>(m, "_PrivateMappingView", py::buffer_protocol()).def_buffer([](PrivateMappingView& v) {
        return py::buffer_info(v.view->data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(v.view->size())}, {py::ssize_t{1}}, /*readonly=*/false);
    });

    py::class_<PyReader>(m, "Reader", "Read-only memory map of a store, validated completely at open.")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def_readonly("path", &PyReader::path)
        .def_property_readonly("format_version", [](const PyReader& r) {
            return std::to_string(r.h.version) + "." + std::to_string(r.h.version_minor);
        })
        .def_property_readonly("k", [](const PyReader& r) { return r.h.k; })
        .def_property_readonly("num_classes", [](const PyReader& r) { return r.h.num_classes; })
        .def_property_readonly("num_samples", [](const PyReader& r) { return r.h.num_samples; })
        .def_property_readonly("num_epochs", [](const PyReader& r) { return r.h.num_epochs; })
        .def_property_readonly("record_size", [](const PyReader& r) { return r.h.record_size; })
        .def_property_readonly("index_width", [](const PyReader& r) { return r.h.index_width; })
        .def_property_readonly("value_kind", [](const PyReader& r) { return r.h.value_kind; })
        .def_property_readonly("records_offset", [](const PyReader& r) { return r.h.records_offset; })
        .def_property_readonly("file_size", [](const PyReader& r) { return r.h.file_size(); })
        .def_property_readonly("has_keys", [](const PyReader& r) { return r.h.has_keys(); })
        .def("metadata_bytes", [](const PyReader& r) { return py::bytes(r.get()->metadata()); })
        .def("epoch_table", [](const PyReader& r) { return epoch_table(*r.get()); })
        .def("buffer", [](const PyReader& r) { return py::memoryview(py::cast(MappingView{r.get()->mapping()})); })
        .def("private_records", [](const PyReader& r, int64_t epoch) {
            return py::memoryview(py::cast(PrivateMappingView{r.get()->private_epoch(epoch)}));
        }, py::arg("epoch"))
        .def("check_size", [](const PyReader& r) { r.get()->check_size(); })
        .def("key", [](const PyReader& r, int64_t sample_id) {
            auto reader = r.get();
            const auto keys = r.keys_or_fail(*reader);
            if (sample_id < 0 || static_cast<uint64_t>(sample_id) >= r.h.num_samples)
                fail(ErrorKind::kIndex, r.path, ": sample id ", sample_id, " out of range [0, ", r.h.num_samples, ")");
            return py::str(keys.key(static_cast<uint64_t>(sample_id)));
        }, py::arg("sample_id"))
        .def("keys", [](const PyReader& r) {
            auto reader = r.get();
            const auto keys = r.keys_or_fail(*reader);
            py::list out(static_cast<size_t>(r.h.num_samples));
            for (uint64_t i = 0; i < r.h.num_samples; ++i) out[i] = py::str(keys.key(i));
            return out;
        })
        .def("lookup", [](const PyReader& r, const std::vector<py::object>& keys) {
            auto reader = r.get();
            const auto table = r.keys_or_fail(*reader);
            std::vector<std::string> wanted;
            std::vector<bool> encodable;
            for (const auto& key : keys) {
                if (!PyUnicode_Check(key.ptr()))
                    fail(ErrorKind::kInvalidInput, "keys: expected str, found ", py::str(py::type::of(key)).cast<std::string>());
                Py_ssize_t size = 0;
                const char* utf8 = PyUnicode_AsUTF8AndSize(key.ptr(), &size);
                if (utf8 == nullptr) PyErr_Clear();  // lone surrogates: no stored key matches
                wanted.emplace_back(utf8 ? std::string(utf8, size_t(size)) : std::string());
                encodable.push_back(utf8 != nullptr);
            }
            py::array_t<int64_t> out(static_cast<py::ssize_t>(wanted.size()));
            int64_t* o = out.mutable_data();
            {
                py::gil_scoped_release release;
                for (size_t j = 0; j < wanted.size(); ++j) o[j] = encodable[j] ? table.lookup(wanted[j]) : -1;
            }
            return out;
        }, py::arg("keys"))
        .def("decode_dense", &PyReader::decode_dense, py::arg("epoch"), py::arg("sample_ids"), py::arg("fill") = 0.0f,
             py::arg("out") = py::none())
        .def("decode_topk", &PyReader::decode_topk, py::arg("epoch"), py::arg("sample_ids"))
        .def("written", [](const PyReader& r, int64_t epoch) { return written(*r.get(), epoch); }, py::arg("epoch"))
        .def("verify", [](const PyReader& r, bool require_complete, int64_t epoch) {
            auto reader = r.get();
            py::gil_scoped_release release;
            reader->verify(require_complete, epoch);
        }, py::arg("require_complete") = true, py::arg("epoch") = -1)
        .def("close", [](PyReader& r) { r.reader.reset(); });

    py::class_<PyWriter>(m, "Writer", "Read-write memory map of a store being written.")
        .def_static("create", &PyWriter::create, py::arg("path"), py::arg("k"), py::arg("num_classes"),
                    py::arg("num_samples"), py::arg("num_epochs"), py::arg("value_kind"), py::arg("metadata_json"),
                    py::arg("keys"), py::arg("overwrite") = false, py::arg("index_width") = 0)
        .def_static("resume", &PyWriter::resume, py::arg("path"))
        .def_readonly("path", &PyWriter::path)
        .def_property_readonly("k", [](const PyWriter& w) { return w.h.k; })
        .def_property_readonly("num_classes", [](const PyWriter& w) { return w.h.num_classes; })
        .def_property_readonly("num_samples", [](const PyWriter& w) { return w.h.num_samples; })
        .def_property_readonly("num_epochs", [](const PyWriter& w) { return w.h.num_epochs; })
        .def_property_readonly("index_width", [](const PyWriter& w) { return w.h.index_width; })
        .def("write_dense", &PyWriter::write_dense, py::arg("epoch"), py::arg("sample_ids"), py::arg("dense"),
             py::arg("seeds"))
        .def("write_topk", &PyWriter::write_topk, py::arg("epoch"), py::arg("sample_ids"), py::arg("values"),
             py::arg("indices"), py::arg("seeds"))
        .def("written", [](const PyWriter& w, int64_t epoch) { return written(*w.get(), epoch); }, py::arg("epoch"))
        .def("close", &PyWriter::close, py::arg("seal") = true);
}
