// edgec_run: run an edgec artifact (model.so + model.json) without Python.
//
// Loads the library with TVM's C++ runtime (libtvm_runtime + libtvm_ffi from the
// apache-tvm / apache-tvm-ffi wheels), reads the manifest beside it, feeds the inputs
// from .npy or raw files, prints the outputs (and the exit taken, for an early-exit
// artifact) and the latency of the call on prepared tensors.
//
//   edgec_run model.so x.npy                       # inputs in manifest order, or NAME=FILE
//   edgec_run model.so x=x.raw --repeat 1000 --out outdir --json
//   edgec_run model.so x.npy --mark-kernels --json  # one more call, each kernel marked for
//                                                  # the instruction counter (icount.c)
//
// Exit codes: 0 ok, 2 bad usage or inputs (one line on stderr), 1 runtime failure.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace ffi = tvm::ffi;
using ffi::Tensor;

namespace {

// A bad input or usage: reported in one line, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: edgec_run MODEL.so [INPUT ...] [--repeat N] [--warmup N] [--out DIR] "
    "[--print N] [--json] [--mark-kernels]\n"
    "  INPUT     FILE.npy or a raw file (little-endian, C order), by position in the\n"
    "            manifest's input order or as NAME=FILE\n"
    "  --repeat  timed calls of the model on prepared tensors (default 100; 0: none)\n"
    "  --warmup  untimed calls first (default 10)\n"
    "  --out     write every output as DIR/<name>.npy\n"
    "  --print   values printed per output (default 16; -1: all)\n"
    "  --json    one JSON object on stdout instead of text\n"
    "  --mark-kernels  one more call with each kernel between the instruction counter's\n"
    "            marks (lseek(-1, MARK, 0): EBADF, harmless); their names are printed\n";

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct Manifest {
  std::vector<Spec> inputs, outputs;
  bool early_exit = false;
  int64_t exit_count = 0;
  std::string thresholds_input;  // non-empty: this input has a default in the manifest
  std::vector<double> thresholds;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

int64_t Numel(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// dtype name <-> numpy descr (little-endian hosts: x86-64 and aarch64 Linux).
const std::map<std::string, std::string> kDescr = {
    {"float32", "<f4"}, {"float64", "<f8"}, {"float16", "<f2"}, {"int8", "|i1"},
    {"uint8", "|u1"},   {"int16", "<i2"},   {"int32", "<i4"},   {"int64", "<i8"},
    {"bool", "|b1"}};

// A manifest field that must be there (an edgec manifest always has it).
ffi::Any Field(const ffi::json::Object& obj, const char* key, const std::string& where) {
  if (obj.count(key) == 0) throw UsageError(where + " has no \"" + key + "\"");
  return obj.at(key);
}

std::vector<Spec> ReadSpecs(const ffi::json::Array& list, const std::string& where) {
  std::vector<Spec> out;
  for (const ffi::Any& item : list) {
    auto obj = item.cast<ffi::json::Object>();
    Spec s{Field(obj, "name", where).cast<ffi::String>(), {},
           Field(obj, "dtype", where).cast<ffi::String>()};
    for (const ffi::Any& d : Field(obj, "shape", where).cast<ffi::json::Array>())
      s.shape.push_back(d.cast<int64_t>());
    out.push_back(s);
  }
  return out;
}

Manifest ReadManifest(const std::string& so_path) {
  std::string path = so_path.substr(0, so_path.rfind('.')) + ".json";
  std::ifstream probe(path);
  if (!probe)
    throw UsageError("cannot read " + path + ": the manifest travels with the library; copy it "
                     "beside " + so_path);
  ffi::String error;
  ffi::json::Value doc = ffi::json::Parse(ReadFile(path), &error);
  if (!error.empty()) throw UsageError(path + " is not JSON: " + std::string(error));
  auto obj = doc.cast<ffi::json::Object>();
  if (obj.count("format") == 0 || obj["format"].cast<ffi::String>() != "edgec-artifact")
    throw UsageError(path + " is not an edgec manifest (no \"format\": \"edgec-artifact\")");
  Manifest m;
  try {  // a field of the wrong type: one line naming the file, as a missing one
    m.inputs = ReadSpecs(Field(obj, "inputs", path).cast<ffi::json::Array>(), path + "'s inputs");
    m.outputs = ReadSpecs(Field(obj, "outputs", path).cast<ffi::json::Array>(),
                          path + "'s outputs");
    ffi::Any exits = obj.count("early_exit") ? obj.at("early_exit") : ffi::Any(nullptr);
    if (exits != nullptr) {  // absent or null: no early exit
      auto e = exits.cast<ffi::json::Object>();
      std::string where = path + "'s early_exit";
      m.early_exit = true;
      m.exit_count = Field(e, "count", where).cast<int64_t>();
      if (e.count("thresholds_as_input") && e.at("thresholds_as_input").cast<bool>() &&
          e.count("thresholds") && e.at("thresholds") != nullptr) {
        m.thresholds_input = "exit_thresholds";
        for (const ffi::Any& t : e.at("thresholds").cast<ffi::json::Array>())
          m.thresholds.push_back(t.try_cast<double>().value());
      }
    }
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    std::string what = e.what();
    throw UsageError(path + " is not a valid edgec manifest: " + what.substr(0, what.find('\n')));
  }
  return m;
}

// ---- .npy / raw input files --------------------------------------------------------

std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  size_t end = key == "shape" ? header.find(')', colon) + 1 : header.find(',', colon);
  std::string v = header.substr(colon + 1, end - colon - 1);
  v.erase(0, v.find_first_not_of(" "));
  return v;
}

// The payload of FILE for input ``spec``: .npy (descr, order and shape checked) or raw bytes.
std::string LoadInput(const std::string& file, const Spec& spec) {
  std::string data = ReadFile(file);
  int64_t nbytes = Numel(spec.shape) * (ffi::StringToDLDataType(spec.dtype).bits / 8);
  std::string want = spec.dtype + ShapeText(spec.shape);
  if (data.compare(0, 6, "\x93NUMPY") != 0) {
    if (static_cast<int64_t>(data.size()) != nbytes)
      throw UsageError("input '" + spec.name + "' (" + file + "): raw file of " +
                       std::to_string(data.size()) + " bytes, expected " + std::to_string(nbytes) +
                       " for " + want);
    return data;
  }
  size_t len_at = 8, header_at = data[6] == 1 ? 10 : 12;
  uint32_t hlen = data[6] == 1 ? uint8_t(data[len_at]) | uint8_t(data[len_at + 1]) << 8
                               : *reinterpret_cast<const uint32_t*>(&data[len_at]);
  std::string header = data.substr(header_at, hlen);
  std::string descr = HeaderValue(header, "descr"), shape = HeaderValue(header, "shape");
  std::vector<int64_t> dims;
  for (size_t i = 1; i < shape.size();) {
    size_t j = shape.find_first_of(",)", i);
    std::string d = shape.substr(i, j - i);
    if (d.find_first_not_of(" ") != std::string::npos) dims.push_back(std::stoll(d));
    i = j + 1;
  }
  auto it = kDescr.find(spec.dtype);
  std::string got_descr = descr.substr(1, descr.size() - 2);
  if (it == kDescr.end() || it->second != got_descr || dims != spec.shape)
    throw UsageError("input '" + spec.name + "' (" + file + ") is " + got_descr + ShapeText(dims) +
                     ", expected " + want + (it == kDescr.end() ? "" : " (" + it->second + ")"));
  if (HeaderValue(header, "fortran_order").rfind("True", 0) == 0)
    throw UsageError("input '" + spec.name + "' (" + file + ") is in Fortran order; save it C-ordered");
  return data.substr(header_at + hlen);
}

void WriteNpy(const std::string& path, const Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  std::vector<int64_t> shape(dl->shape, dl->shape + dl->ndim);
  std::string dtype = ffi::DLDataTypeToString(dl->dtype);
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.erase(dims.size() - 2);
  else if (shape.size() == 1) dims.erase(dims.size() - 1);
  auto descr = kDescr.find(dtype);
  if (descr == kDescr.end()) throw std::runtime_error("cannot write a " + dtype + " output as .npy");
  std::string header = "{'descr': '" + descr->second + "', 'fortran_order': False, 'shape': (" +
                       dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f << header;
  f.write(static_cast<const char*>(dl->data), Numel(shape) * ((dl->dtype.bits + 7) / 8));
  if (!f) throw std::runtime_error("cannot write " + path);
}

// ---- running -----------------------------------------------------------------------

// Host memory aligned as TVM's kernels assume (64 bytes: they may use aligned vector loads).
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    if (posix_memalign(&t->data, 64, n ? n : 1) != 0) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

Tensor MakeTensor(const Spec& spec, const std::string& bytes) {
  Tensor t = Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(spec.shape),
                                 ffi::StringToDLDataType(spec.dtype), DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

void Flatten(const ffi::Any& v, std::vector<Tensor>* out) {
  if (auto t = v.as<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  for (const ffi::Any& item : v.cast<ffi::Array<ffi::Any>>()) Flatten(item, out);
}

std::string ValuesText(const Tensor& t, int64_t limit) {
  int64_t n = t.numel();
  int64_t shown = limit < 0 ? n : std::min(n, limit);
  std::ostringstream s;
  s.precision(9);
  std::string dtype = ffi::DLDataTypeToString(t.dtype());
  for (int64_t i = 0; i < shown; ++i) {
    s << (i ? " " : "");
    const char* p = static_cast<const char*>(t.data_ptr());
    if (dtype == "float32") s << reinterpret_cast<const float*>(p)[i];
    else if (dtype == "float64") s << reinterpret_cast<const double*>(p)[i];
    else if (dtype == "int32") s << reinterpret_cast<const int32_t*>(p)[i];
    else if (dtype == "int64") s << reinterpret_cast<const int64_t*>(p)[i];
    else if (dtype == "int8") s << int(reinterpret_cast<const int8_t*>(p)[i]);
    else if (dtype == "uint8" || dtype == "bool") s << int(reinterpret_cast<const uint8_t*>(p)[i]);
    else return "(" + dtype + " values not printed)";
  }
  if (shown < n) s << " ... (" << n << " values)";
  return s.str();
}

struct Options {
  std::string model, out;
  std::vector<std::string> inputs;
  int64_t repeat = 100, warmup = 10, print = 16;
  bool json = false, mark_kernels = false;
};

int64_t IntArg(int argc, char** argv, int* i) {
  if (*i + 1 >= argc) throw UsageError(std::string(argv[*i]) + " needs a value");
  try {
    return std::stoll(argv[++*i]);
  } catch (const std::exception&) {
    throw UsageError(std::string(argv[*i - 1]) + " takes an integer, got '" + argv[*i] + "'");
  }
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--repeat") o.repeat = IntArg(argc, argv, &i);
    else if (a == "--warmup") o.warmup = IntArg(argc, argv, &i);
    else if (a == "--print") o.print = IntArg(argc, argv, &i);
    else if (a == "--json") o.json = true;
    else if (a == "--mark-kernels") o.mark_kernels = true;
    else if (a == "--out") {
      if (++i >= argc) throw UsageError("--out needs a folder");
      o.out = argv[i];
    } else if (a.rfind("--", 0) == 0) {
      throw UsageError("unknown option " + a +
                       "; valid: --repeat --warmup --out --print --json --mark-kernels");
    } else if (o.model.empty()) o.model = a;
    else o.inputs.push_back(a);
  }
  if (o.model.empty()) throw UsageError("no model given");
  if (o.repeat < 0 || o.warmup < 0) throw UsageError("--repeat and --warmup must be >= 0");
  return o;
}

// Inputs in manifest order: NAME=FILE or positional; the thresholds input may be left out.
std::vector<Tensor> PrepareInputs(const Manifest& m, const std::vector<std::string>& args) {
  std::map<std::string, std::string> files;
  std::vector<std::string> names;
  for (const Spec& s : m.inputs) names.push_back(s.name);
  size_t position = 0;
  for (const std::string& a : args) {
    size_t eq = a.find('=');
    std::string name = eq == std::string::npos ? "" : a.substr(0, eq);
    if (!name.empty() && std::find(names.begin(), names.end(), name) != names.end()) {
      files[name] = a.substr(eq + 1);
    } else {
      if (position >= names.size())
        throw UsageError("too many inputs: the model takes " + std::to_string(names.size()));
      files[names[position++]] = a;
    }
  }
  std::vector<Tensor> out;
  for (const Spec& s : m.inputs) {
    if (files.count(s.name)) {
      out.push_back(MakeTensor(s, LoadInput(files[s.name], s)));
    } else if (s.name == m.thresholds_input) {
      std::vector<float> t(m.thresholds.begin(), m.thresholds.end());
      out.push_back(MakeTensor(s, std::string(reinterpret_cast<char*>(t.data()), t.size() * 4)));
    } else {
      throw UsageError("missing input '" + s.name + "' (" + s.dtype + ShapeText(s.shape) +
                       "); the model takes, in order: " + [&] {
                         std::string all;
                         for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
                         return all;
                       }());
    }
  }
  return out;
}

// The VM on CPU with TVM's pooled allocator (as tvm.relax.VirtualMachine does).
ffi::Module LoadVM(const std::string& path) {
  // dlopen searches the library path for a name without '/': give it the file itself
  ffi::Module lib = ffi::Module::LoadFromFile(path.find('/') == std::string::npos ? "./" + path : path);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  constexpr int kPooledAllocator = 2;
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  return vm;
}

// The instruction counter's window marks (compiler/deploy/icount.py, icount.c).
constexpr off_t kMarkStart = static_cast<off_t>(0x6564676563000001ULL);
constexpr off_t kMarkStop = static_cast<off_t>(0x6564676563000002ULL);

// One call of "main" with every kernel (a PrimFunc; not the VM's builtins) between a
// start and a stop mark; returns the kernels' symbols in launch order.
std::vector<std::string> MarkKernels(ffi::Module vm, const ffi::Function& main,
                                     const std::vector<ffi::AnyView>& args) {
  std::vector<std::string> names;
  ffi::Function instrument = ffi::Function::FromPacked(
      [&names](ffi::PackedArgs a, ffi::Any* rv) {
        std::string symbol = a[1].cast<ffi::String>();
        if (symbol.rfind("vm.builtin.", 0) != 0) {
          if (a[2].cast<bool>()) {
            names.push_back(symbol);
            (void)lseek(-1, kMarkStart, SEEK_SET);
          } else {
            (void)lseek(-1, kMarkStop, SEEK_SET);
          }
        }
        *rv = 0;  // VMInstrumentReturnKind::kNoOp
      });
  ffi::Function set = vm->GetFunction("set_instrument").value();
  set(instrument);
  ffi::Any rv;
  main.CallPacked(args.data(), args.size(), &rv);
  set(ffi::Function(nullptr));
  return names;
}

struct Latency {
  double min_us = 0, median_us = 0, mean_us = 0;
};

// Each timed call runs "main" on the prepared tensors, as an application's loop would.
Latency Time(const ffi::Function& main, const std::vector<ffi::AnyView>& args, int64_t warmup,
             int64_t repeat) {
  ffi::Any rv;
  for (int64_t i = 0; i < warmup; ++i) main.CallPacked(args.data(), args.size(), &rv);
  std::vector<double> us;
  for (int64_t i = 0; i < repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    main.CallPacked(args.data(), args.size(), &rv);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  Latency l;
  if (us.empty()) return l;
  std::sort(us.begin(), us.end());
  l.min_us = us.front();
  l.median_us = us.size() % 2 ? us[us.size() / 2] : (us[us.size() / 2 - 1] + us[us.size() / 2]) / 2;
  l.mean_us = std::accumulate(us.begin(), us.end(), 0.0) / us.size();
  return l;
}

std::string JsonString(const std::string& s) {
  return std::string(ffi::json::Stringify(ffi::String(s)));
}

int Run(const Options& o) {
  Manifest m = ReadManifest(o.model);
  std::vector<Tensor> inputs = PrepareInputs(m, o.inputs);
  ffi::Module vm = LoadVM(o.model);
  ffi::Function main = vm->GetFunction("main").value();
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any rv;
  main.CallPacked(args.data(), args.size(), &rv);
  std::vector<Tensor> outputs;
  Flatten(rv, &outputs);
  if (outputs.size() != m.outputs.size())
    throw std::runtime_error("the model returned " + std::to_string(outputs.size()) +
                             " outputs, its manifest lists " + std::to_string(m.outputs.size()));
  int64_t exit_taken = -1;
  if (m.early_exit) exit_taken = *static_cast<const int32_t*>(outputs.back().data_ptr());
  Latency lat = Time(main, args, o.warmup, o.repeat);
  std::vector<std::string> kernels;
  if (o.mark_kernels) kernels = MarkKernels(vm, main, args);
  std::ostringstream js;
  js.precision(6);
  js << std::fixed << "{\"model\": " << JsonString(o.model) << ", \"outputs\": [";
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Spec& s = m.outputs[i];
    std::string file = o.out.empty() ? "" : o.out + "/" + s.name + ".npy";
    if (!file.empty()) WriteNpy(file, outputs[i]);
    if (o.json) {
      js << (i ? ", " : "") << "{\"name\": " << JsonString(s.name) << ", \"dtype\": \""
         << s.dtype << "\", \"shape\": " << ShapeText(s.shape)
         << (file.empty() ? "" : ", \"file\": " + JsonString(file)) << "}";
    } else {
      std::printf("%s %s%s: %s\n", s.name.c_str(), s.dtype.c_str(), ShapeText(s.shape).c_str(),
                  ValuesText(outputs[i], o.print).c_str());
    }
  }
  if (o.json) {
    js << "], \"exit_taken\": " << (m.early_exit ? std::to_string(exit_taken) : "null")
       << ", \"exits\": " << m.exit_count << ", \"latency_us\": {\"calls\": " << o.repeat
       << ", \"warmup\": " << o.warmup << ", \"min\": " << lat.min_us << ", \"median\": "
       << lat.median_us << ", \"mean\": " << lat.mean_us << "}";
    if (o.mark_kernels) {
      js << ", \"kernels\": [";
      for (size_t i = 0; i < kernels.size(); ++i) js << (i ? ", " : "") << JsonString(kernels[i]);
      js << "]";
    }
    js << "}";
    std::printf("%s\n", js.str().c_str());
    return 0;
  }
  for (const std::string& k : kernels) std::printf("kernel %s\n", k.c_str());
  if (m.early_exit)
    std::printf("exit taken: %lld of 0..%lld (%lld: the final head)\n", (long long)exit_taken,
                (long long)m.exit_count, (long long)m.exit_count);
  if (o.repeat > 0)
    std::printf("latency: median %.3f us, min %.3f us, mean %.3f us over %lld calls (%lld warm-up)\n",
                lat.median_us, lat.min_us, lat.mean_us, (long long)o.repeat, (long long)o.warmup);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "edgec_run: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::string what = e.what();  // TVM errors carry a traceback: keep the last line
    while (!what.empty() && what.back() == '\n') what.pop_back();
    std::fprintf(stderr, "edgec_run: error: %s\n", what.substr(what.rfind('\n') + 1).c_str());
    return 1;
  }
}
