#!/usr/bin/python
# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: vmsubst_facts
short_description: What vmsubst sees on a hypervisor host
description:
  - Sets C(ansible_facts.vmsubst) on the host, with the version of its vmsubst command, the VMs it
    sees and the last bundle applied to each (from the rollout state files in C(state_dir)).
  - The VMs are those listed in C(vms) (is each one's QMP socket there), the libvirt domains when
    C(libvirt) is set (C(virsh list)), and those the state files name.
version_added: 0.1.0
author: vmsubst developers (@vmsubst)
options:
  vms:
    description: The VMs of this host as listed for M(vmsubst.fleet.vmsubst_rollout) (only C(name) and C(qmp) are read).
    type: list
    elements: dict
  libvirt:
    description: Also list the host's running libvirt domains (C(virsh list --name)).
    type: bool
    default: false
  libvirt_uri:
    description: The libvirt connection URI, e.g. C(qemu:///system).
    type: str
  state_dir:
    description: Where M(vmsubst.fleet.vmsubst_rollout) keeps its state files.
    type: path
    default: /var/lib/vmsubst/rollout
  vmsubst_path:
    description: The vmsubst command on the host. A C(.mjs) file is run with C(node).
    type: str
    default: vmsubst
notes:
  - Supports check mode (it changes nothing).
seealso:
  - module: vmsubst.fleet.vmsubst_rollout
'''

EXAMPLES = r'''
- name: What vmsubst sees here
  vmsubst.fleet.vmsubst_facts:
    vms: "{{ vmsubst_vms }}"

- name: Show the last bundle of each VM
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.last_bundle.id | default('none') }}"
  loop: "{{ ansible_facts.vmsubst.vms }}"
'''

RETURN = r'''
ansible_facts:
  description: C(vmsubst), the facts.
  returned: always
  type: complex
  contains:
    vmsubst:
      description: What vmsubst sees on the host.
      type: complex
      contains:
        version:
          description: The version of the vmsubst command (C(vmsubst --version)).
          type: str
        vms:
          description:
            - One entry per VM, C(name), C(source) (C(inventory), C(libvirt), C(state)), C(running)
              (its QMP socket is there, or libvirt lists it), and C(last_bundle) (C(id), C(status),
              C(at)) when a state file records one applied or done.
          type: list
          elements: dict
        bundles:
          description: The bundle ids with a state file on the host, and how many VMs each has done.
          type: dict
'''

import glob
import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmsubst.fleet.plugins.module_utils.vmsubst import (
    DONE, VMSUBST_ARGS, read_state, run_json)


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vms=dict(type='list', elements='dict'),
            libvirt=dict(type='bool', default=False),
            libvirt_uri=dict(type='str'),
            state_dir=dict(type='path', default='/var/lib/vmsubst/rollout'),
            **VMSUBST_ARGS
        ),
        required_by={'libvirt_uri': 'libvirt'},
        supports_check_mode=True,
    )
    p = module.params
    rc, version, err = run_json(module, ['--version'])

    last = {}
    bundles = {}
    for path in sorted(glob.glob(os.path.join(p['state_dir'], '*.state.json'))):
        state = read_state(path)
        if state is None:
            continue
        done = 0
        for name, rec in state.get('vms', {}).items():
            if rec.get('status') not in DONE:
                continue
            done += 1
            if name not in last or rec.get('at', '') > last[name]['at']:
                last[name] = {'id': state['bundle'], 'status': rec['status'], 'at': rec.get('at', '')}
        bundles[state['bundle']] = {'vms-done': done, 'state': path}

    vms = []
    seen = set()
    for vm in p['vms'] or []:
        if 'name' not in vm:
            module.fail_json(msg='vms: every VM needs a name')
        seen.add(vm['name'])
        vms.append({'name': vm['name'], 'source': 'inventory', 'qmp': vm.get('qmp'),
                    'running': bool(vm.get('qmp')) and is_socket(vm['qmp'])})
    if p['libvirt']:
        virsh = module.get_bin_path('virsh', required=True)
        cmd = [virsh] + (['-c', p['libvirt_uri']] if p['libvirt_uri'] else []) + ['list', '--name']
        rc, out, err = module.run_command(cmd)
        if rc != 0:
            module.fail_json(msg='virsh list failed: %s' % err.strip(), rc=rc)
        for name in [x.strip() for x in out.splitlines() if x.strip()]:
            if name not in seen:
                seen.add(name)
                vms.append({'name': name, 'source': 'libvirt', 'running': True})
    for name in sorted(last):
        if name not in seen:
            vms.append({'name': name, 'source': 'state', 'running': None})
    for vm in vms:
        if vm['name'] in last:
            vm['last_bundle'] = last[vm['name']]
    module.exit_json(changed=False, ansible_facts={'vmsubst': {
        'version': version.get('version'), 'vms': vms, 'bundles': bundles}})


if __name__ == '__main__':
    main()
