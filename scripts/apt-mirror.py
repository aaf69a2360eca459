#!/usr/bin/env python3
"""Prints the archive URI this machine's own apt configuration uses for a suite.

    apt-mirror.py SUITE        e.g. bookworm, bookworm-security

Reads what apt reads: /etc/apt/sources.list and /etc/apt/sources.list.d/*.list
(one-line "deb [options] URI SUITE COMPONENT...") and *.sources (deb822
stanzas with Types, URIs, Suites, Enabled). A machine behind a local mirror or
proxy is served by it; no host name is written into the project. Exits 1 when
no enabled "deb" source serves the suite.
"""
import glob
import re
import sys


def one_line_sources(text):
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        m = re.match(r'deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)', line)
        if m:
            yield m.group(1), [m.group(2)]


def deb822_sources(text):
    for stanza in re.split(r'\n\s*\n', text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            if line[0] in ' \t' and key:
                fields[key] += ' ' + line.strip()
                continue
            k, _, v = line.partition(':')
            key = k.strip().lower()
            fields[key] = v.strip()
        if fields.get('enabled', 'yes').lower() == 'no' or 'deb' not in fields.get('types', '').split():
            continue
        for uri in fields.get('uris', '').split():
            yield uri, fields.get('suites', '').split()


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: apt-mirror.py SUITE')
    suite = sys.argv[1]
    files = ['/etc/apt/sources.list'] + sorted(glob.glob('/etc/apt/sources.list.d/*.list')) \
        + sorted(glob.glob('/etc/apt/sources.list.d/*.sources'))
    for path in files:
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
        except OSError:
            continue
        entries = deb822_sources(text) if path.endswith('.sources') else one_line_sources(text)
        for uri, suites in entries:
            if suite in suites:
                print(uri.rstrip('/'))
                return
    sys.exit(1)


main()
