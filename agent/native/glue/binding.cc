// SPDX-License-Identifier: GPL-2.0-only
//
// The guest's addon, vmsubst_native.node: the kernel module's ioctls, FIEMAP
// and the pedigree walk, O_DIRECT reads, the vsock listener, sd_notify and
// stream adoption. Each concern registers its exports and constants here;
// glue.h describes the model they share.
#include "glue.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Object constants = Napi::Object::New(env);
  vs::RegisterErrors(env, exports, constants);
  vs::RegisterFs(env, exports, constants);
  vs::RegisterWalk(env, exports, constants);
  vs::RegisterKmod(env, exports, constants);
  vs::RegisterVsock(env, exports, constants);
  vs::RegisterStream(env, exports, constants);
  exports.Set("constants", constants);
  return exports;
}

}  // namespace

NODE_API_MODULE(vmsubst_native, Init)
