// SPDX-License-Identifier: GPL-2.0-only
//
// The host's addon, vmsubst_host.node: what only the host CLI uses (the
// differ's hole detection and block comparison, vsock connect) and the
// stream adoption it shares with the agent's addon (agent/native/glue).
#include "host_glue.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Object constants = Napi::Object::New(env);
  vs::RegisterErrors(env, exports, constants);
  vs::RegisterDiff(env, exports, constants);
  vs::RegisterConnect(env, exports, constants);
  vs::RegisterStream(env, exports, constants);
  exports.Set("constants", constants);
  return exports;
}

}  // namespace

NODE_API_MODULE(vmsubst_host, Init)
