{
  "targets": [
    {
      "target_name": "vmsubst_host",
      "sources": [
        "native/glue/binding.cc",
        "native/glue/connect.cc",
        "native/glue/diff.cc",
        "native/compare.c",
        "native/prefault.c",
        "native/seek.c",
        "native/vsock_connect.c",
        "../agent/native/glue/args.cc",
        "../agent/native/glue/errors.cc",
        "../agent/native/glue/stream.cc",
        "../agent/native/vsock.c"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "include_dirs": [
        "native",
        "native/glue",
        "../agent/native",
        "../agent/native/glue"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags": [
        "-Wall",
        "-Wextra",
        "-Werror"
      ],
      "cflags_c": [
        "-std=gnu11"
      ]
    }
  ]
}
