# Copyright: vmsubst developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmsubst_bundle: sends the controller's bundle to the host, then runs the module there on it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = self._task.args.copy()
        if args.get('remote_src', False) or not args.get('src'):
            result.update(self._execute_module(module_name='vmsubst.fleet.vmsubst_bundle', module_args=args,
                                               task_vars=task_vars))
            return result
        try:
            source = self._find_needle('files', args['src'])
        except AnsibleError as e:
            result.update(failed=True, msg=to_text(e))
            return result
        remote = self._connection._shell.join_path(self._connection._shell.tmpdir, os.path.basename(source))
        try:
            self._transfer_file(source, remote)
            self._fixup_perms2((self._connection._shell.tmpdir, remote))
            args.update(src=remote, remote_src=True)
            result.update(self._execute_module(module_name='vmsubst.fleet.vmsubst_bundle', module_args=args,
                                               task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
