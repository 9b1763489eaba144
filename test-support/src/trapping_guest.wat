;; A minimal proxy-wasm (ABI 0.2.1) HTTP filter that traps on demand, for the host's failure
;; tests (failStrategy, VM reload). Every request gets `x-trap-guest: <n>`, where n is the
;; number of requests this instance has seen (mod 10): after a reload it starts again at 1.
;; The response gets `x-trap-guest: <n>` too (the count at that time). The request header `x-trap` names the callback
;; that traps (`unreachable`):
;;   request-headers | request-body | response-headers | response-body
;; told apart by length (15 | 12 | 16 | 13), so the guest needs no string compare. The mode is
;; kept per context (at 1024 + context % 256), as body and response callbacks come later.
;; Each trapping callback changes its headers first, so failing open must drop that change.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-trap")
  (data (i32.const 32) "x-trap-guest")
  (data (i32.const 56) "0")
  (global $bump (mut i32) (i32.const 8192))
  (global $served (mut i32) (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))

  ;; A bump allocator over [8192, 65536): the host copies header values here.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (if (i32.gt_u (i32.add (global.get $bump) (local.get $size)) (i32.const 65536))
      (then (global.set $bump (i32.const 8192))))
    (local.set $ptr (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $ptr))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  (func $mode_slot (param $context i32) (result i32)
    (i32.add (i32.const 1024) (i32.and (local.get $context) (i32.const 255))))
  (func $mode (param $context i32) (result i32)
    (i32.load8_u (call $mode_slot (local.get $context))))

  (func (export "proxy_on_request_headers") (param $context i32) (param i32 i32) (result i32)
    (local $mode i32)
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    (i32.store8 (i32.const 56)
      (i32.add (i32.const 48) (i32.rem_u (global.get $served) (i32.const 10))))
    ;; map 0: request headers
    (drop (call $add_header (i32.const 0) (i32.const 32) (i32.const 12) (i32.const 56) (i32.const 1)))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 64) (i32.const 68)))
      (then (local.set $mode (i32.load (i32.const 68)))))
    (i32.store8 (call $mode_slot (local.get $context)) (local.get $mode))
    (if (i32.eq (local.get $mode) (i32.const 15)) (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param $context i32) (param i32 i32) (result i32)
    (if (i32.eq (call $mode (local.get $context)) (i32.const 12)) (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $context i32) (param i32 i32) (result i32)
    ;; map 2: response headers
    (drop (call $add_header (i32.const 2) (i32.const 32) (i32.const 12) (i32.const 56) (i32.const 1)))
    (if (i32.eq (call $mode (local.get $context)) (i32.const 16)) (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_response_body") (param $context i32) (param i32 i32) (result i32)
    (if (i32.eq (call $mode (local.get $context)) (i32.const 13)) (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
