#!/usr/bin/python
# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: vmsubst_bundle
short_description: Put a vmsubst bundle on a hypervisor host, checked
description:
  - Copies a bundle to C(dest) on the host after C(vmsubst inspect) has checked it (header,
    manifest, every range's data against its sha256), its id against C(id) when given, and its
    signature against C(trusted_keys) when given.
  - By default C(src) is a file on the controller, sent by the collection's action plugin; with
    C(remote_src) it is a file already on the host.
  - Idempotent, a bundle already at C(dest) with the same content is left alone (C(changed=false)).
version_added: 0.1.0
author: vmsubst developers (@vmsubst)
options:
  src:
    description: The bundle file (on the controller, or on the host with C(remote_src)).
    type: path
    required: true
  dest:
    description:
      - Where the bundle goes on the host. An existing directory (or a path ending in C(/)) receives
        it as C(ID.vsb).
    type: path
    required: true
  remote_src:
    description: C(src) is already on the host.
    type: bool
    default: false
  id:
    description: The bundle id expected (sha256 of its manifest, as C(vmsubst diff) prints it); another id fails.
    type: str
  trusted_keys:
    description:
      - Ed25519 public keys (paths on the host). When given, a bundle not validly signed by one of
        them fails and is not copied.
    type: list
    elements: path
  mode:
    description: File mode of the bundle on the host.
    type: raw
    default: '0600'
  vmsubst_path:
    description: The vmsubst command on the host. A C(.mjs) file is run with C(node).
    type: str
    default: vmsubst
notes:
  - Supports check mode.
seealso:
  - module: vmsubst.fleet.vmsubst_rollout
'''

EXAMPLES = r'''
- name: The bundle from the controller, checked and signed
  vmsubst.fleet.vmsubst_bundle:
    src: bundles/openssl-fix.vsb
    dest: /var/lib/vmsubst/bundles/
    id: 5f1c0e...
    trusted_keys: [/etc/vmsubst/release.pub]
  register: bundle

- name: Use it
  vmsubst.fleet.vmsubst_rollout:
    bundle: "{{ bundle.path }}"
    vms: "{{ vmsubst_vms }}"
'''

RETURN = r'''
path:
  description: Where the bundle is on the host.
  returned: always
  type: str
id:
  description: The bundle's id.
  returned: always
  type: str
signature:
  description: The signature check (C(status) unsigned, valid, unverified or invalid; C(keyId)).
  returned: always
  type: dict
ranges:
  description: Changed ranges in the bundle.
  returned: always
  type: int
changed_bytes:
  description: Bytes the bundle changes.
  returned: always
  type: int
'''

import hashlib
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmsubst.fleet.plugins.module_utils.vmsubst import VMSUBST_ARGS, inspect


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type='path', required=True),
            dest=dict(type='path', required=True),
            remote_src=dict(type='bool', default=False),
            id=dict(type='str'),
            trusted_keys=dict(type='list', elements='path', no_log=False),
            mode=dict(type='raw', default='0600'),
            **VMSUBST_ARGS
        ),
        supports_check_mode=True,
    )
    p = module.params
    src = p['src']
    if not os.path.isfile(src):
        module.fail_json(msg='src %s: no such file on the host' % src)
    doc = inspect(module, src, p['trusted_keys'])
    manifest = doc['manifest']
    bid = manifest['id']
    if p['id'] and p['id'].lower() != bid:
        module.fail_json(msg='bundle %s has id %s, not the id given (%s)' % (src, bid, p['id']), id=bid)
    sig = doc['signature']
    if p['trusted_keys'] and sig.get('status') != 'valid':
        module.fail_json(msg='bundle %s is not validly signed by a trusted key (%s)' % (src, sig.get('status')),
                         signature=sig, id=bid)

    dest = p['dest']
    if os.path.isdir(dest) or module.params['dest'].endswith('/'):
        dest = os.path.join(dest, '%s.vsb' % bid)
    result = dict(path=dest, id=bid, signature=sig, ranges=len(manifest.get('ranges', [])),
                  changed_bytes=sum(r.get('length', 0) for r in manifest.get('ranges', [])))
    same = os.path.isfile(dest) and os.path.realpath(dest) == os.path.realpath(src)
    same = same or (os.path.isfile(dest) and os.path.getsize(dest) == os.path.getsize(src)
                    and sha256(dest) == sha256(src))
    changed = not same
    if changed and not module.check_mode:
        d = os.path.dirname(dest)
        if not os.path.isdir(d):
            os.makedirs(d, 0o755)
        fd, tmp = tempfile.mkstemp(dir=d, prefix='.%s.' % os.path.basename(dest))
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.rename(tmp, dest)
        except Exception:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if not module.check_mode or not changed:
        file_args = module.load_file_common_arguments(dict(path=dest, mode=p['mode']))
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, **result)


if __name__ == '__main__':
    main()
