# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: summary
type: aggregate
short_description: A per-VM table of every vmsubst rollout at the end of the run
description:
  - After the play recap, prints one line per VM of every hypervisor host that ran
    M(vmsubst.fleet.vmsubst_rollout), and the hosts of the play it never reached (a later batch
    that did not start).
  - Enable it with C(callbacks_enabled = vmsubst.fleet.summary) in ansible.cfg
    (or C(ANSIBLE_CALLBACKS_ENABLED)).
author: vmsubst developers (@vmsubst)
requirements:
  - enable in configuration
'''

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible_collections.vmsubst.fleet.plugins.module_utils.vmsubst import human_bytes

ROLLOUT = ('vmsubst_rollout', 'vmsubst.fleet.vmsubst_rollout')


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'vmsubst.fleet.summary'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._results = {}
        self._hosts = []
        self._batches = 0
        self._check = False

    def v2_playbook_on_play_start(self, play):
        # Called once per batch of a play with serial, the inventory restricted to the batch.
        self._check = bool(context.CLIARGS.get('check'))
        try:
            inventory = play.get_variable_manager()._inventory
            everyone = [h.name for h in inventory.get_hosts(play.hosts, ignore_restrictions=True)]
            batch = [h.name for h in inventory.get_hosts(play.hosts)]
        except Exception:
            return
        for h in everyone:
            if h not in self._hosts:
                self._hosts.append(h)
        if play.serial:
            self._batches += 1
            self._display.display('vmsubst: batch %d: %s (%d of %d hosts)' % (
                self._batches, ', '.join(batch), len(batch), len(everyone)))

    def _record(self, result):
        if result._task.action not in ROLLOUT:
            return
        self._results[result._host.get_name()] = result._result

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result)

    def v2_playbook_on_stats(self, stats):
        if not self._results:
            return
        rows = [('HOST', 'VM', 'RESULT', 'WRITTEN', 'AGENT', 'DETAIL')]
        totals = {}
        for host in self._hosts + sorted(set(self._results) - set(self._hosts)):
            r = self._results.get(host)
            if r is None:
                rows.append((host, '-', 'not reached', '-', '-', 'its batch did not start'))
                totals['host not reached'] = totals.get('host not reached', 0) + 1
                continue
            vms = r.get('vms')
            if not vms:
                rows.append((host, '-', 'error', '-', '-', r.get('msg', '')))
                totals['host error'] = totals.get('host error', 0) + 1
                continue
            for v in vms:
                detail = (v.get('error') or {}).get('message', '')
                if not detail and v.get('stale'):
                    detail = '%d process(es) on old code' % len(v['stale'])
                if not detail and v.get('plan'):
                    detail = 'plan: %s' % v['plan'].get('status')
                if not detail and v.get('notes') and v['result'] in ('not-started', 'would-apply'):
                    detail = v['notes'][0]
                agent = 'told' if v.get('told') else ('-' if v['result'] in ('would-apply', 'refused', 'not-started')
                                                      else 'not told')
                rows.append((host, v['name'], v['result'], human_bytes(v.get('written', 0)), agent, detail))
                totals[v['result']] = totals.get(v['result'], 0) + 1
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        self._display.banner('VMSUBST SUMMARY%s' % (' (check mode: nothing written)' if self._check else ''))
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(len(widths))] + [row[-1]]
            self._display.display('  '.join(cells).rstrip())
        self._display.display('VMs: ' + ', '.join('%d %s' % (n, k) for k, n in sorted(totals.items())))
