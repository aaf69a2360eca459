#!/usr/bin/env bash
# The collection's sanity checks that run offline, on an installed copy: COLLECTIONS_DIR holds
# ansible_collections/vmsubst/fleet (ansible-galaxy collection install -p COLLECTIONS_DIR).
#  - validate-modules (documentation against argument_spec, RETURN, EXAMPLES, license header), run
#    directly with the system Python: `ansible-test sanity --test validate-modules` would first
#    bootstrap pip into a virtual environment from the network;
#  - the ansible-test sanity tests that need no virtual environment (--local).
set -euo pipefail
dir=$1/ansible_collections/vmsubst/fleet
cd "$dir"
export ANSIBLE_COLLECTIONS_PATH=$1
# Debian's ansible-test and its Python (not another python3 earlier on PATH).
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
validate=$(python3 -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_util/controller/sanity/validate-modules/validate.py"))')
version=$(python3 -c 'import json; print(json.load(open("MANIFEST.json"))["collection_info"]["version"])')
errors=0
for kind in modules callback; do
  args=(--format json --arg-spec --collection ansible_collections/vmsubst/fleet --collection-version "$version")
  [ "$kind" = modules ] || args+=(--plugin-type "$kind")
  out=$(python3 "$validate" "${args[@]}" plugins/$kind/*.py)
  n=$(python3 -c 'import json, sys
d = json.load(sys.stdin)
for f, v in d.items():
    for e in v["errors"]:
        print("%s: %s: %s" % (f, e["code"], e["msg"]), file=sys.stderr)
print(sum(len(v["errors"]) for v in d.values()))' <<<"$out")
  errors=$((errors + n))
done
echo "validate-modules: $errors errors"
ansible-test sanity --local --python "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  --test shebang --test action-plugin-docs --test future-import-boilerplate --test metaclass-boilerplate \
  --test no-assert --test line-endings --test empty-init --test use-argspec-type-path --test no-smart-quotes \
  --test no-get-exception --test no-illegal-filenames --test no-main-display --test symlinks --test replace-urlopen
echo "ansible-test sanity (offline tests): passed"
[ "$errors" = 0 ]
