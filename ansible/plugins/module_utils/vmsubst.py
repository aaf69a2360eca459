# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the vmsubst command on the managed host and reads its --json documents."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os

VMSUBST_ARGS = dict(
    vmsubst_path=dict(type='str', default='vmsubst'),
)

# Statuses of a rollout state file that mean "this VM is done" (host-signal/src/rollout/state.ts).
DONE = ('applied', 'done-before')
STATE_FORMAT = 'vmsubst-rollout-state-1'


def command(module, args):
    """The vmsubst command line: the path given (a bundled .mjs is run by node) and args."""
    path = module.params['vmsubst_path']
    found = module.get_bin_path(path) if os.sep not in path else path
    if not found or not os.path.exists(found):
        module.fail_json(msg="vmsubst not found: %s" % path,
                         hint='install the vmsubst package on the host, or set vmsubst_path')
    if found.endswith('.mjs') or found.endswith('.js'):
        return [module.get_bin_path('node', required=True), found] + list(args)
    return [found] + list(args)


def run_json(module, args, ok_codes=(0,)):
    """Runs vmsubst ARGS --json. Returns (rc, document, stderr); fails the module when no JSON came back."""
    rc, out, err = module.run_command(command(module, list(args) + ['--json']))
    try:
        doc = json.loads(out)
    except ValueError:
        module.fail_json(msg="vmsubst %s printed no JSON (exit %d): %s" % (args[0], rc, (err or out).strip()[-2000:]),
                         rc=rc, stderr=err)
    if rc not in ok_codes and isinstance(doc, dict) and 'error' in doc and len(doc) == 1:
        e = doc['error']
        module.fail_json(msg="vmsubst %s: %s" % (args[0], e.get('message')), code=e.get('code'),
                         hint=e.get('hint'), rc=rc)
    return rc, doc, err


def inspect(module, path, trusted_keys=None):
    """vmsubst inspect: the bundle's manifest and signature, every range's data checked.

    With trusted_keys, a bundle not validly signed by one of them fails the module."""
    args = ['inspect', path]
    for k in trusted_keys or []:
        args += ['--trusted-key', k]
    rc, doc, err = run_json(module, args)
    return doc


def state_path(state_dir, bundle_id):
    return os.path.join(state_dir, '%s.state.json' % bundle_id)


def read_state(path):
    """The rollout state file as a dict, or None when it is absent or not one."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get('format') != STATE_FORMAT:
        return None
    return doc


def human_bytes(n):
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
        n = n / 1024.0
