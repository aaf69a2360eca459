/**
 * Whether a running process may fault in the new version of an ELF file
 * (policy `remap`) or must keep its old image (`pin`): decided by what
 * changed, not by the headers. A process holds addresses into the file's
 * code everywhere: return addresses and saved instruction pointers on its
 * stacks, in signal frames and in other threads' contexts, and code pointers
 * in its data (function pointers, vtables, the relocated GOT, callbacks
 * registered with libraries). If one executable byte changed, one of those
 * may now point into different instructions — "same layout" is not enough: a
 * function's instructions that moved inside it keep every section, symbol
 * and size, and kill the process at its next return.
 *
 * `code-unchanged` therefore requires, between the base and the patched file:
 *   - the ELF header fields that place things (class, byte order, type,
 *     machine, entry, program header table) and every program header equal;
 *   - every byte of every executable segment (PT_LOAD with PF_X) equal, over
 *     its file range [p_offset, p_offset + p_filesz);
 *   - every byte of the tables the dynamic loader and the unwinder read from
 *     the mapped file while the process runs equal: .dynamic, .dynsym, its
 *     string table, the hash tables, the symbol versions, the relocations
 *     (lazy binding resolves through .rela.plt at a function's first call),
 *     .eh_frame, .eh_frame_hdr, .gcc_except_table — located by the section
 *     headers; a dynamically linked file without section headers is taken as
 *     changed, since those tables cannot be located.
 * Anything else — .rodata, .data, .comment, debug sections — may differ.
 * Everything else is `code-changed`, with the first difference named.
 * ELF32 and ELF64, either byte order.
 */

export class ElfFormatError extends Error {}

export function isElf(head: Buffer): boolean {
  return head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46;
}

export type CodeVerdict = { elf: 'code-unchanged' } | { elf: 'code-changed'; change: string };

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PF_X = 1;
const SHF_ALLOC = 2;
/** Section types the loader or the unwinder reads at run time. */
const RUNTIME_TYPES = new Map<number, string>([
  [4, 'RELA'],
  [5, 'HASH'],
  [6, 'DYNAMIC'],
  [9, 'REL'],
  [11, 'DYNSYM'],
  [19, 'RELR'],
  [0x6ffffff6, 'GNU_HASH'],
  [0x6ffffffd, 'VERDEF'],
  [0x6ffffffe, 'VERNEED'],
  [0x6fffffff, 'VERSYM'],
  [0x70000001, 'X86_64_UNWIND'],
]);
const RUNTIME_NAMES = new Set(['.dynstr', '.eh_frame', '.eh_frame_hdr', '.gcc_except_table']);

/** A range of the file whose bytes must be equal for `code-unchanged`, with what it is. */
export interface CodeRange {
  what: string;
  offset: number;
  size: number;
}

export interface ElfCode {
  class: 32 | 64;
  /** The ELF header fields that place things, and every program header: compared line by line. */
  headers: string[];
  /** The executable segments, then the run-time tables. */
  ranges: CodeRange[];
  /** Why the file cannot be judged code-unchanged whatever its bytes, if so. */
  opaque?: string;
}

/** Parses what decides the verdict; throws ElfFormatError on a truncated or malformed file. */
export function elfCode(file: Buffer): ElfCode {
  if (!isElf(file) || file.length < 52) throw new ElfFormatError('not an ELF file');
  const cls = file[4];
  const data = file[5];
  if (cls !== 1 && cls !== 2) throw new ElfFormatError(`unknown ELF class ${cls}`);
  if (data !== 1 && data !== 2) throw new ElfFormatError(`unknown ELF byte order ${data}`);
  const is64 = cls === 2;
  const le = data === 1;
  const need = (off: number, n: number, what: string): void => {
    if (off < 0 || n < 0 || off + n > file.length)
      throw new ElfFormatError(`${what} at ${off}+${n} runs past the end of the file (${file.length} bytes)`);
  };
  const u16 = (o: number): number => (le ? file.readUInt16LE(o) : file.readUInt16BE(o));
  const u32 = (o: number): number => (le ? file.readUInt32LE(o) : file.readUInt32BE(o));
  const u64 = (o: number): bigint => (le ? file.readBigUInt64LE(o) : file.readBigUInt64BE(o));
  const addr = (o: number): string => (is64 ? u64(o) : BigInt(u32(o))).toString(16);
  const off = (o: number): number => {
    const v = is64 ? u64(o) : BigInt(u32(o));
    if (v > BigInt(Number.MAX_SAFE_INTEGER))
      throw new ElfFormatError(`offset or size 0x${v.toString(16)} at ${o} is out of range`);
    return Number(v);
  };
  need(0, is64 ? 64 : 52, 'ELF header');

  const phoff = off(is64 ? 32 : 28);
  const shoff = off(is64 ? 40 : 32);
  const phentsize = u16(is64 ? 54 : 42);
  const phnum = u16(is64 ? 56 : 44);
  const shentsize = u16(is64 ? 58 : 46);
  const shnum = u16(is64 ? 60 : 48);
  const shstrndx = u16(is64 ? 62 : 50);
  const headers = [
    `elf class=${is64 ? 64 : 32} data=${le ? 'le' : 'be'} type=${u16(16)} machine=${u16(18)} entry=${addr(24)} phoff=${phoff.toString(16)} phentsize=${phentsize} phnum=${phnum}`,
  ];
  const ranges: CodeRange[] = [];
  let dynamic = false;

  if (phnum > 0) {
    if (phentsize < (is64 ? 56 : 32)) throw new ElfFormatError(`program header entry size ${phentsize} too small`);
    need(phoff, phnum * phentsize, 'program headers');
    for (let i = 0; i < phnum; i++) {
      const p = phoff + i * phentsize;
      // p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
      const type = u32(p);
      const flags = u32(is64 ? p + 4 : p + 24);
      const offset = off(is64 ? p + 8 : p + 4);
      const filesz = off(is64 ? p + 32 : p + 16);
      const f = is64
        ? [addr(p + 16), addr(p + 24), addr(p + 40), addr(p + 48)]
        : [addr(p + 8), addr(p + 12), addr(p + 20), addr(p + 28)];
      headers.push(
        `phdr ${i} type=${type} flags=${flags} offset=${offset.toString(16)} vaddr=${f[0]} paddr=${f[1]} filesz=${filesz.toString(16)} memsz=${f[2]} align=${f[3]}`,
      );
      if (type === PT_DYNAMIC) dynamic = true;
      if (type === PT_LOAD && (flags & PF_X) !== 0) {
        need(offset, filesz, `executable segment (program header ${i})`);
        ranges.push({ what: `executable segment (PT_LOAD, program header ${i})`, offset, size: filesz });
      }
    }
  }

  if (shnum === 0) {
    return {
      class: is64 ? 64 : 32,
      headers,
      ranges,
      ...(dynamic
        ? {
            opaque:
              'dynamically linked, without section headers: the tables the loader reads at run time cannot be located',
          }
        : {}),
    };
  }
  if (shentsize < (is64 ? 64 : 40)) throw new ElfFormatError(`section header entry size ${shentsize} too small`);
  need(shoff, shnum * shentsize, 'section headers');
  interface Section {
    name: number;
    type: number;
    flags: bigint;
    offset: number;
    size: number;
    link: number;
  }
  const sections: Section[] = Array.from({ length: shnum }, (_, i) => {
    const s = shoff + i * shentsize;
    return is64
      ? { name: u32(s), type: u32(s + 4), flags: u64(s + 8), offset: off(s + 24), size: off(s + 32), link: u32(s + 40) }
      : {
          name: u32(s),
          type: u32(s + 4),
          flags: BigInt(u32(s + 8)),
          offset: off(s + 16),
          size: off(s + 20),
          link: u32(s + 24),
        };
  });
  const strtab = sections[shstrndx];
  const nameOf = (at: number): string => {
    if (!strtab || at >= strtab.size) return `#${at}`;
    const start = strtab.offset + at;
    need(start, 1, 'section name table');
    const end = file.indexOf(0, start);
    return file.toString(
      'latin1',
      start,
      end === -1 || end > strtab.offset + strtab.size ? strtab.offset + strtab.size : end,
    );
  };
  const dynstr = new Set(sections.filter((s) => s.type === 11).map((s) => s.link));
  sections.forEach((s, i) => {
    if ((s.flags & BigInt(SHF_ALLOC)) === 0n || s.type === 8 /* NOBITS */) return;
    const name = nameOf(s.name);
    const type = RUNTIME_TYPES.get(s.type);
    if (type === undefined && !RUNTIME_NAMES.has(name) && !dynstr.has(i)) return;
    need(s.offset, s.size, `section ${name}`);
    ranges.push({ what: `section ${name}${type !== undefined ? ` (${type})` : ''}`, offset: s.offset, size: s.size });
  });
  return { class: is64 ? 64 : 32, headers, ranges };
}

/** The first offset at which two equally long ranges differ, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  // Narrow down by halves: Buffer.equals is a memcmp, a byte loop over a large segment is not.
  let lo = 0;
  let hi = a.length;
  while (hi - lo > 64) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (!a.subarray(lo, mid).equals(b.subarray(lo, mid))) hi = mid;
    else lo = mid;
  }
  for (let i = lo; i < hi; i++) if (a[i] !== b[i]) return i;
  return lo;
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const changed = (change: string): CodeVerdict => ({ elf: 'code-changed', change: change.slice(0, 512) });

/** Compares two versions of one ELF file; `change` names the first difference found. */
export function compareElf(base: Buffer | undefined, patched: Buffer): CodeVerdict {
  if (base === undefined) return changed('not in the base image');
  if (!isElf(base)) return changed('not an ELF file in the base image');
  let a: ElfCode;
  let b: ElfCode;
  try {
    a = elfCode(base);
  } catch (e) {
    return changed(`base: ${(e as Error).message}`);
  }
  try {
    b = elfCode(patched);
  } catch (e) {
    return changed(`patched: ${(e as Error).message}`);
  }
  for (let i = 0; i < Math.max(a.headers.length, b.headers.length); i++) {
    if (a.headers[i] !== b.headers[i])
      return changed(`program headers: ${a.headers[i] ?? '(none)'} → ${b.headers[i] ?? '(none)'}`);
  }
  if (b.opaque !== undefined) return changed(b.opaque);
  const key = (r: CodeRange): string => `${r.what} at ${hex(r.offset)}+${hex(r.size)}`;
  for (let i = 0; i < Math.max(a.ranges.length, b.ranges.length); i++) {
    const ra = a.ranges[i];
    const rb = b.ranges[i];
    if (!ra || !rb || key(ra) !== key(rb))
      return changed(`placement: ${ra ? key(ra) : '(none)'} → ${rb ? key(rb) : '(none)'}`);
    const at = firstDifference(
      base.subarray(ra.offset, ra.offset + ra.size),
      patched.subarray(rb.offset, rb.offset + rb.size),
    );
    if (at >= 0)
      return changed(
        `${rb.what}: bytes differ from file offset ${hex(rb.offset + at)} (range ${hex(rb.offset)}+${hex(rb.size)})`,
      );
  }
  return { elf: 'code-unchanged' };
}
