// SPDX-License-Identifier: GPL-2.0-only
//
// -errno → a JavaScript Error shaped like node's fs errors (see glue.h), of
// the class the facade hands over with setErrorClass(NativeError), else a
// plain Error with the same fields.
#include <string.h>

#include "glue.h"

namespace vs {

namespace {

std::string ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* name = strerrorname_np(err)) return name;
#endif
  char buf[64];
  uv_err_name_r(-err, buf, sizeof(buf));
  return buf;
}

std::string ErrnoDescription(int err) {
  char buf[256];
  std::string text = strerror_r(err, buf, sizeof(buf));
  // Node's messages are lower case ("no such file or directory"); keep
  // acronyms ("I/O error") intact.
  if (text.size() > 1 && text[0] >= 'A' && text[0] <= 'Z' && text[1] >= 'a' &&
      text[1] <= 'z') {
    text[0] = static_cast<char>(text[0] - 'A' + 'a');
  }
  return text;
}

// new ErrorClass(message), or a plain Error before setErrorClass (or if the
// constructor throws).
Napi::Error NewError(Napi::Env env, const std::string& message) {
  Napi::FunctionReference* cls = env.GetInstanceData<Napi::FunctionReference>();
  if (cls != nullptr && !cls->IsEmpty()) {
    try {
      return Napi::Error(env, cls->New({Napi::String::New(env, message)}));
    } catch (const Napi::Error&) {
      // fall through
    }
  }
  return Napi::Error::New(env, message);
}

// setErrorClass(ctor): every error made from then on is `new ctor(message)`.
Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Function ctor = ArgFunction(info, 0, "ctor");
  env.SetInstanceData(new Napi::FunctionReference(Napi::Persistent(ctor)));
  return env.Undefined();
}

}  // namespace

void RegisterErrors(Napi::Env env, Napi::Object exports, Napi::Object) {
  exports.Set("setErrorClass", Napi::Function::New<SetErrorClass>(env, "setErrorClass"));
}

Napi::Error MakeError(Napi::Env env, int neg_errno, const char* syscall,
                      const std::string& detail, const char* path) {
  const int err = neg_errno < 0 ? -neg_errno : neg_errno;
  const std::string code = ErrnoName(err);
  std::string message = code + ": " + ErrnoDescription(err) + ", " + syscall;
  if (!detail.empty()) message += " " + detail;
  Napi::Error error = NewError(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, -err));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) obj.Set("path", Napi::String::New(env, path));
  return error;
}

std::string Quoted(const std::string& path) { return "'" + path + "'"; }

std::string VsockAddress(uint32_t cid, uint32_t port) {
  return "vsock " + std::to_string(cid) + ":" + std::to_string(port);
}

}  // namespace vs
