#!/usr/bin/python
# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: vmsubst_rollout
short_description: Roll a vmsubst bundle out to the VMs of one hypervisor host
description:
  - Runs C(vmsubst rollout --json) on the hypervisor host over the VMs it runs, listed in C(vms)
    (the fields of a vmsubst fleet file) or discovered from libvirt with C(libvirt_all).
  - Each VM's disk is checked against the bundle's old blocks first; a VM whose disk diverged is
    refused and nothing is written to it.
  - Progress is kept in a per-host state file (one per bundle, in C(state_dir)); running the module
    again with the same bundle resumes where a previous run stopped and confirms the VMs done
    before instead of writing them again.
  - C(changed) is true only when blocks were written to some VM.
  - In check mode it runs C(vmsubst plan) (each agent's dry run) and reads the state file;
    nothing is written, and the result says which VMs would be written.
  - The module fails when any VM was refused, failed or not started; the per-VM results are
    returned all the same.
version_added: 0.1.0
author: vmsubst developers (@vmsubst)
options:
  bundle:
    description:
      - Path of the bundle on the hypervisor host (see M(vmsubst.fleet.vmsubst_bundle)).
      - In check mode the bundle may be absent (not distributed yet); C(bundle_id) then names it.
    type: path
    required: true
  bundle_id:
    description:
      - The bundle's id (sha256 of its manifest), as M(vmsubst.fleet.vmsubst_bundle) returns it.
      - When the bundle is present its id must match.
    type: str
  vms:
    description:
      - The VMs of this host, each with the fields of a vmsubst fleet file entry.
      - Mutually exclusive with C(libvirt_all).
    type: list
    elements: dict
    suboptions:
      name:
        description: Unique on the host; names the VM in the results and the state file.
        type: str
        required: true
      qmp:
        description: QMP unix socket of the running QEMU.
        type: path
        required: true
      device:
        description: qdev id of the disk device (C(-device ...,id=ID)).
        type: str
      node:
        description: Block node name of the disk (C(-blockdev ...,node-name=NAME)).
        type: str
      agent:
        description:
          - The guest agent's address, C(serial:PATH), C(vsock:CID:PORT), C(hvsock:PATH:PORT) or
            C(unix:PATH). Without it the guest is not told (see C(on_no_agent)).
        type: str
      disk:
        description: How the agent finds the disk, a dict with C(serial) or C(path).
        type: dict
      uuid:
        description: The VM's SMBIOS UUID, named in signed requests.
        type: str
      policies:
        description: Per-VM policies (see the vmsubst documentation, rollout).
        type: dict
      customization:
        description: Per-VM customization (see the vmsubst documentation, rollout).
        type: dict
  defaults:
    description: Settings every VM of C(vms) takes unless it gives its own (C(device), C(node), C(disk), ...).
    type: dict
  libvirt_all:
    description:
      - Discover the VMs instead of listing them. Passes C(--libvirt-all) (and C(--connect) with
        C(libvirt_uri)) to C(vmsubst rollout), which needs a vmsubst with libvirt support.
    type: bool
    default: false
  libvirt_uri:
    description: The libvirt connection URI for C(libvirt_all), e.g. C(qemu:///system).
    type: str
  state_dir:
    description: Where the per-bundle state files (and the fleet file written from C(vms)) are kept.
    type: path
    default: /var/lib/vmsubst/rollout
  concurrency:
    description: VMs of this host in flight at once.
    type: int
    default: 4
  canary:
    description: The first N VMs of this host go first and must all succeed before any other starts.
    type: int
    default: 0
  continue_on_failure:
    description: Carry on with the host's other VMs after a refused or failed VM (the host still fails).
    type: bool
    default: false
  on_no_agent:
    description:
      - When a VM's agent does not answer. C(fail) refuses the VM and writes nothing; C(warn) writes
        and reports the guest as not told (it serves cached copies of changed files until they are
        evicted or it restarts); C(reset) writes, then resets the VM.
    type: str
    choices: [fail, warn, reset]
    default: warn
  agent_timeout:
    description: Seconds to wait for each agent answer.
    type: int
  sign_key:
    description: Ed25519 private key (from C(vmsubst keygen)) to sign each request with.
    type: path
  vmsubst_path:
    description:
      - The vmsubst command on the host. A C(.mjs) file is run with C(node).
    type: str
    default: vmsubst
notes:
  - One inventory host per hypervisor host; use the play's C(serial) and C(max_fail_percentage)
    for the batches across hosts, and C(concurrency)/C(canary) within a host.
  - Supports check mode.
seealso:
  - module: vmsubst.fleet.vmsubst_bundle
  - module: vmsubst.fleet.vmsubst_facts
'''

EXAMPLES = r'''
- name: Roll the bundle out to the VMs listed for this host
  vmsubst.fleet.vmsubst_rollout:
    bundle: /var/lib/vmsubst/bundles/openssl-fix.vsb
    vms:
      - name: web-1
        qmp: /run/vms/web-1/qmp.sock
        agent: serial:/run/vms/web-1/agent.sock
      - name: web-2
        qmp: /run/vms/web-2/qmp.sock
        agent: serial:/run/vms/web-2/agent.sock
    defaults:
      device: vblk0
      disk: {serial: vmsubst-data}
    concurrency: 2
    on_no_agent: fail
  register: rollout

- name: Every libvirt domain of the host (needs a vmsubst with libvirt support)
  vmsubst.fleet.vmsubst_rollout:
    bundle: /var/lib/vmsubst/bundles/openssl-fix.vsb
    libvirt_all: true
    libvirt_uri: qemu:///system
'''

RETURN = r'''
bundle:
  description: The bundle's id.
  returned: always
  type: str
ok:
  description: Every VM applied or done before.
  returned: always
  type: bool
halted:
  description: Why the rollout stopped before every VM was handled.
  returned: when it stopped early
  type: str
counts:
  description: VMs per result (C(applied), C(already-applied), C(no-agent), C(refused), C(failed), C(not-started)).
  returned: always
  type: dict
written:
  description: Bytes written on this host, over all VMs.
  returned: always
  type: int
state:
  description: The state file of this bundle on the host.
  returned: always
  type: str
vms:
  description: One entry per VM.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The VM's name.
      type: str
    result:
      description:
        - C(applied) blocks written and the agent told; C(already-applied) nothing to write (done
          before, or the disk held the new blocks); C(no-agent) written (or, with C(on_no_agent)=fail,
          refused) while no agent answered; C(refused) the disk diverged from the bundle's base,
          nothing written; C(failed); C(not-started) the rollout halted first.
        - In check mode C(would-apply), C(already-applied) (the state file records it done).
      type: str
    status:
      description: The status vmsubst reported (C(applied), C(done-before), C(refused), C(failed), C(not-started)).
      type: str
    written:
      description: Bytes written to this VM's disk.
      type: int
    told:
      description: The guest's agent was told and answered.
      type: bool
    agent:
      description:
        - The agent's outcome (mode, version, why it was unreachable, what not telling means, the files
          its report names).
      type: dict
    stale:
      description:
        - Processes still on old code after the substitution, from the agent's report (pinned processes,
          and mappers of files whose policy is C(report)). Empty when the agent was not told.
      type: list
      elements: dict
    error:
      description: Code, message and hint of a refused or failed VM.
      type: dict
    notes:
      description: What vmsubst noted about the VM.
      type: list
      elements: str
    plan:
      description: In check mode, the agent's dry-run plan status (C(planned), C(no-agent), ...) and files.
      type: dict
summary:
  description: One line per VM, for people.
  returned: always
  type: list
  elements: str
rollout:
  description: The whole C(vmsubst rollout --json) document (not in check mode).
  returned: when the rollout ran
  type: dict
'''

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vmsubst.fleet.plugins.module_utils.vmsubst import (
    DONE, VMSUBST_ARGS, human_bytes, inspect, read_state, run_json, state_path)

VM_SPEC = dict(
    name=dict(type='str', required=True),
    qmp=dict(type='path', required=True),
    device=dict(type='str'),
    node=dict(type='str'),
    agent=dict(type='str'),
    disk=dict(type='dict'),
    uuid=dict(type='str'),
    policies=dict(type='dict'),
    customization=dict(type='dict'),
)


def fleet_document(vms, defaults):
    """The fleet file vmsubst rollout reads: the options as given, unset fields left out."""
    doc = {'vms': [dict((k, v) for k, v in vm.items() if v is not None) for vm in vms]}
    if defaults:
        doc['defaults'] = defaults
    return doc


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.rename(tmp, path)


def stale_processes(report):
    """Processes the agent's report leaves on old code: pinned ones, and mappers of files kept under `report`."""
    if not report:
        return []
    out = []
    for p in report.get('pinned') or []:
        if p.get('status') == 'pinned':
            out.append({'pid': p['pid'], 'comm': p['comm'], 'path': p['path'], 'why': 'pinned'})
    kept = set(f['path'] for f in (report.get('plan') or {}).get('files', []) if f.get('policy') == 'report')
    for f in report.get('files') or []:
        if f['path'] in kept:
            for m in f.get('mappers', []):
                out.append({'pid': m.get('pid'), 'comm': m.get('comm'), 'path': f['path'], 'why': 'report'})
    return out


def vm_result(v):
    """One VM of the rollout document, as this module returns it."""
    apply = v.get('apply') or {}
    guest = v.get('guest') or {}
    written = apply.get('written', 0)
    status = v['status']
    error = v.get('error')
    if status == 'refused':
        result = 'refused'
    elif status == 'failed':
        result = 'no-agent' if error and error.get('code') == 'E_VMSUBST_NO_AGENT' else 'failed'
    elif status == 'not-started':
        result = 'not-started'
    elif status == 'done-before' or written == 0:
        result = 'already-applied'
    elif not guest.get('told'):
        result = 'no-agent'
    else:
        result = 'applied'
    r = {
        'name': v['name'],
        'result': result,
        'status': status,
        'written': written,
        'told': bool(guest.get('told')),
        'reset': v.get('reset', False),
        'agent': dict((k, x) for k, x in guest.items() if k != 'report'),
        'stale': stale_processes(guest.get('report')),
        'notes': v.get('notes', []),
    }
    report = guest.get('report')
    if report:
        r['agent']['files'] = [f['path'] for f in report.get('files', [])]
    if error:
        r['error'] = error
    return r


def summary_line(r):
    parts = [r['result']]
    if r['written']:
        parts.append('%s written' % human_bytes(r['written']))
    if r['result'] in ('applied', 'already-applied', 'no-agent') and r['status'] != 'failed':
        parts.append('agent told' if r['told'] else ('not told, VM reset' if r.get('reset') else 'agent not told'))
    if r.get('stale'):
        parts.append('%d process(es) on old code' % len(r['stale']))
    if r.get('plan'):
        parts.append('plan: %s' % r['plan']['status'])
    if r.get('error'):
        parts.append(r['error'].get('message', ''))
    return '%s: %s' % (r['name'], ', '.join(parts))


def counts_of(results):
    c = dict((k, 0) for k in ('applied', 'already-applied', 'no-agent', 'refused', 'failed', 'not-started',
                              'would-apply'))
    for r in results:
        c[r['result']] = c.get(r['result'], 0) + 1
    return dict((k, n) for k, n in c.items() if n or k != 'would-apply')


def check_mode(module, bundle_id, fleet_path, state):
    """Check mode: the state file says which VMs are done; vmsubst plan asks each agent for its dry run."""
    p = module.params
    recorded = (read_state(state) or {}).get('vms', {}) if bundle_id else {}
    plans = {}
    plan_note = None
    if p['libvirt_all']:
        plan_note = 'vmsubst plan takes a fleet file; with libvirt_all only the state file is consulted'
    elif not os.path.exists(p['bundle']):
        plan_note = 'the bundle is not on the host yet (check mode distributes nothing): no plans asked'
    else:
        rc, doc, err = run_json(module, ['plan', fleet_path, p['bundle']], ok_codes=(0, 1))
        plans = dict((v['name'], v) for v in doc.get('vms', []))
    names = [vm['name'] for vm in p['vms'] or []] or sorted(recorded)
    results = []
    for name in names:
        done = recorded.get(name, {}).get('status') in DONE
        r = {'name': name, 'result': 'already-applied' if done else 'would-apply', 'status': 'check',
             'written': 0, 'told': False, 'agent': {}, 'stale': [], 'notes': []}
        plan = plans.get(name)
        if plan:
            r['plan'] = {'status': plan['status']}
            if plan.get('plan'):
                r['plan']['files'] = [{'path': f['path'], 'policy': f['policy'], 'action': f.get('action')}
                                      for f in plan['plan'].get('files', [])]
                r['plan']['restart-required'] = plan['plan'].get('restart-required', False)
            if plan.get('error'):
                r['plan']['error'] = plan['error'].get('message')
        elif plan_note:
            r['notes'].append(plan_note)
        results.append(r)
    changed = any(r['result'] == 'would-apply' for r in results)
    module.exit_json(changed=changed, ok=True, bundle=bundle_id, state=state, vms=results,
                     counts=counts_of(results), written=0,
                     summary=[summary_line(r) for r in results] or ['no VMs listed'])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bundle=dict(type='path', required=True),
            bundle_id=dict(type='str'),
            vms=dict(type='list', elements='dict', options=VM_SPEC),
            defaults=dict(type='dict'),
            libvirt_all=dict(type='bool', default=False),
            libvirt_uri=dict(type='str'),
            state_dir=dict(type='path', default='/var/lib/vmsubst/rollout'),
            concurrency=dict(type='int', default=4),
            canary=dict(type='int', default=0),
            continue_on_failure=dict(type='bool', default=False),
            on_no_agent=dict(type='str', default='warn', choices=['fail', 'warn', 'reset']),
            agent_timeout=dict(type='int'),
            sign_key=dict(type='path', no_log=False),
            **VMSUBST_ARGS
        ),
        mutually_exclusive=[('vms', 'libvirt_uri')],
        supports_check_mode=True,
    )
    p = module.params
    if not p['libvirt_all'] and not p['vms']:
        module.fail_json(msg='give the VMs of this host (vms) or libvirt_all: true')
    if p['libvirt_all'] and p['vms']:
        module.fail_json(msg='give the VMs of this host (vms) or libvirt_all: true, not both')
    if p['libvirt_uri'] and not p['libvirt_all']:
        module.fail_json(msg='libvirt_uri goes with libvirt_all: true')
    if p['concurrency'] < 1:
        module.fail_json(msg='concurrency %d: expected a whole number of at least 1' % p['concurrency'])
    if p['canary'] < 0 or (p['vms'] and p['canary'] > len(p['vms'])):
        module.fail_json(msg='canary %d: expected 0 to the number of VMs (%d)' % (p['canary'], len(p['vms'] or [])))
    if p['vms']:
        names = [vm['name'] for vm in p['vms']]
        twice = sorted(set(n for n in names if names.count(n) > 1))
        if twice:
            module.fail_json(msg='vms: names must be unique on a host; given more than once: %s' % ', '.join(twice))

    bundle_id = p['bundle_id']
    if os.path.exists(p['bundle']):
        found = inspect(module, p['bundle'])['manifest']['id']
        if bundle_id and bundle_id != found:
            module.fail_json(msg='bundle %s has id %s, not the bundle_id given (%s)' % (p['bundle'], found, bundle_id))
        bundle_id = found
    elif not module.check_mode:
        module.fail_json(msg='bundle %s: no such file on the host' % p['bundle'],
                         hint='put it there first (vmsubst.fleet.vmsubst_bundle)')

    state = state_path(p['state_dir'], bundle_id) if bundle_id else None
    fleet_path = None
    if p['vms']:
        text = json.dumps(fleet_document(p['vms'], p['defaults']), indent=2) + '\n'
        if module.check_mode:
            fleet_path = os.path.join(module.tmpdir, 'fleet.json')
            with open(fleet_path, 'w') as f:
                f.write(text)
        else:
            if not os.path.isdir(p['state_dir']):
                os.makedirs(p['state_dir'], 0o700)
            fleet_path = os.path.join(p['state_dir'], '%s.fleet.json' % bundle_id)
            write_atomic(fleet_path, text)

    if module.check_mode:
        check_mode(module, bundle_id, fleet_path, state)

    if p['libvirt_all']:
        args = ['rollout', p['bundle'], '--libvirt-all'] + (['--connect', p['libvirt_uri']] if p['libvirt_uri'] else [])
        if not os.path.isdir(p['state_dir']):
            os.makedirs(p['state_dir'], 0o700)
    else:
        args = ['rollout', fleet_path, p['bundle']]
    args += ['--state', state, '--concurrency', str(p['concurrency']), '--canary', str(p['canary']),
             '--on-no-agent', p['on_no_agent']]
    if p['continue_on_failure']:
        args.append('--continue')
    if p['agent_timeout']:
        args += ['--agent-timeout', str(p['agent_timeout'])]
    if p['sign_key']:
        args += ['--sign', p['sign_key']]
    rc, doc, err = run_json(module, args, ok_codes=(0, 1))
    if 'vms' not in doc:
        module.fail_json(msg='vmsubst rollout exited %d without a result: %s' % (rc, err.strip()[-2000:]), rc=rc)

    results = [vm_result(v) for v in doc['vms']]
    written = sum(r['written'] for r in results)
    out = dict(
        changed=written > 0,
        ok=bool(doc['ok']),
        bundle=doc['bundle'],
        state=state,
        counts=counts_of(results),
        written=written,
        vms=results,
        summary=[summary_line(r) for r in results],
        rollout=doc,
    )
    if doc.get('halted'):
        out['halted'] = doc['halted']
    if not doc['ok']:
        bad = [r for r in results if r['result'] in ('refused', 'failed', 'not-started')
               or (r['result'] == 'no-agent' and r['status'] == 'failed')]
        module.fail_json(msg='%d of %d VMs not done: %s' % (
            len(bad), len(results), '; '.join(summary_line(r) for r in bad)), **out)
    module.exit_json(**out)


if __name__ == '__main__':
    main()
