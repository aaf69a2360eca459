/**
 * Whether an ELF file's layout is unchanged between two versions: the
 * property that lets a running process fault in the new file's pages
 * (policy `remap`) rather than keep its old image (`pin`). Same layout means
 * the ELF header fields that place things (type, machine, entry, header
 * offsets and counts), every program header, every section header (name,
 * type, flags, address, file offset, size, link, info, alignment, entry
 * size) and every symbol of .symtab and .dynsym (name, value, size, type,
 * binding, section) are identical; only section contents may differ. ELF32
 * and ELF64, either byte order.
 */

export interface ElfLayout {
  class: 32 | 64;
  /** Canonical text lines, one per header, section and symbol; compared line by line. */
  lines: string[];
}

export class ElfFormatError extends Error {}

export function isElf(head: Buffer): boolean {
  return head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46;
}

const SHT_SYMTAB = 2;
const SHT_DYNSYM = 11;
/** Symbols read per table at most; beyond this the file is judged by its headers and this many symbols. */
const MAX_SYMBOLS = 1 << 20;

/** Parses what decides the layout; throws ElfFormatError on a truncated or malformed file. */
export function elfLayout(file: Buffer): ElfLayout {
  if (!isElf(file) || file.length < 52) throw new ElfFormatError('not an ELF file');
  const cls = file[4];
  const data = file[5];
  if (cls !== 1 && cls !== 2) throw new ElfFormatError(`unknown ELF class ${cls}`);
  if (data !== 1 && data !== 2) throw new ElfFormatError(`unknown ELF byte order ${data}`);
  const is64 = cls === 2;
  const le = data === 1;
  const need = (off: number, n: number, what: string): void => {
    if (off < 0 || off + n > file.length) throw new ElfFormatError(`${what} at ${off} runs past the end of the file (${file.length} bytes)`);
  };
  const u16 = (o: number): number => (le ? file.readUInt16LE(o) : file.readUInt16BE(o));
  const u32 = (o: number): number => (le ? file.readUInt32LE(o) : file.readUInt32BE(o));
  const u64 = (o: number): bigint => (le ? file.readBigUInt64LE(o) : file.readBigUInt64BE(o));
  const addr = (o: number): string => (is64 ? u64(o) : BigInt(u32(o))).toString(16);
  const off = (o: number): number => (is64 ? Number(u64(o)) : u32(o));
  need(0, is64 ? 64 : 52, 'ELF header');

  const type = u16(16);
  const machine = u16(18);
  const entry = addr(24);
  const phoff = off(is64 ? 32 : 28);
  const shoff = off(is64 ? 40 : 32);
  const phentsize = u16(is64 ? 54 : 42);
  const phnum = u16(is64 ? 56 : 44);
  const shentsize = u16(is64 ? 58 : 46);
  const shnum = u16(is64 ? 60 : 48);
  const shstrndx = u16(is64 ? 62 : 50);
  const lines = [`elf class=${is64 ? 64 : 32} data=${le ? 'le' : 'be'} type=${type} machine=${machine} entry=${entry} phnum=${phnum} shnum=${shnum}`];

  if (phnum > 0) {
    need(phoff, phnum * phentsize, 'program headers');
    for (let i = 0; i < phnum; i++) {
      const p = phoff + i * phentsize;
      // p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
      const f = is64
        ? [u32(p), u32(p + 4), addr(p + 8), addr(p + 16), addr(p + 24), addr(p + 32), addr(p + 40), addr(p + 48)]
        : [u32(p), u32(p + 24), addr(p + 4), addr(p + 8), addr(p + 12), addr(p + 16), addr(p + 20), addr(p + 28)];
      lines.push(`phdr ${i} type=${f[0]} flags=${f[1]} offset=${f[2]} vaddr=${f[3]} paddr=${f[4]} filesz=${f[5]} memsz=${f[6]} align=${f[7]}`);
    }
  }

  interface Section { name: string; type: number; offset: number; size: number; link: number; entsize: number }
  const sections: Section[] = [];
  if (shnum > 0) {
    need(shoff, shnum * shentsize, 'section headers');
    const raw = Array.from({ length: shnum }, (_, i) => shoff + i * shentsize);
    const field = (s: number) =>
      is64
        ? { name: u32(s), type: u32(s + 4), flags: addr(s + 8), addr: addr(s + 16), offset: off(s + 24), size: off(s + 32), link: u32(s + 40), info: u32(s + 44), align: addr(s + 48), entsize: off(s + 56) }
        : { name: u32(s), type: u32(s + 4), flags: addr(s + 8), addr: addr(s + 12), offset: off(s + 16), size: off(s + 20), link: u32(s + 24), info: u32(s + 28), align: addr(s + 32), entsize: off(s + 36) };
    const hdrs = raw.map(field);
    const strtab = hdrs[shstrndx];
    const name = (tab: { offset: number; size: number } | undefined, at: number): string => {
      if (!tab || at >= tab.size) return `#${at}`;
      const start = tab.offset + at;
      need(start, 1, 'string table');
      const end = file.indexOf(0, start);
      return file.toString('latin1', start, end === -1 || end > tab.offset + tab.size ? tab.offset + tab.size : end);
    };
    hdrs.forEach((h, i) => {
      const n = name(strtab, h.name);
      sections.push({ name: n, type: h.type, offset: h.offset, size: h.size, link: h.link, entsize: h.entsize });
      lines.push(`shdr ${i} name=${n} type=${h.type} flags=${h.flags} addr=${h.addr} offset=${h.offset.toString(16)} size=${h.size.toString(16)} link=${h.link} info=${h.info} align=${h.align} entsize=${h.entsize}`);
    });
    for (const s of sections) {
      if (s.type !== SHT_SYMTAB && s.type !== SHT_DYNSYM) continue;
      const ent = s.entsize || (is64 ? 24 : 16);
      if (ent < (is64 ? 24 : 16)) throw new ElfFormatError(`${s.name}: symbol entry size ${ent} too small`);
      need(s.offset, s.size, s.name);
      const strs = sections[s.link];
      const count = Math.min(Math.floor(s.size / ent), MAX_SYMBOLS);
      for (let i = 0; i < count; i++) {
        const e = s.offset + i * ent;
        // st_name st_value st_size st_info st_other st_shndx
        const [nm, value, size, info, other, shndx] = is64
          ? [u32(e), addr(e + 8), addr(e + 16), file[e + 4]!, file[e + 5]!, u16(e + 6)]
          : [u32(e), addr(e + 4), addr(e + 8), file[e + 12]!, file[e + 13]!, u16(e + 14)];
        lines.push(`sym ${s.name} ${name(strs, nm)} value=${value} size=${size} info=${info} other=${other} shndx=${shndx}`);
      }
    }
  }
  return { class: is64 ? 64 : 32, lines };
}

export type LayoutVerdict = { layout: 'same-layout' } | { layout: 'new-layout'; change: string };

/** Compares the layouts of two versions of one ELF file; `change` names the first difference. */
export function compareElf(base: Buffer | undefined, patched: Buffer): LayoutVerdict {
  if (base === undefined) return { layout: 'new-layout', change: 'not in the base image' };
  if (!isElf(base)) return { layout: 'new-layout', change: 'not an ELF file in the base image' };
  let a: ElfLayout;
  let b: ElfLayout;
  try {
    a = elfLayout(base);
  } catch (e) {
    return { layout: 'new-layout', change: `base: ${(e as Error).message}` };
  }
  try {
    b = elfLayout(patched);
  } catch (e) {
    return { layout: 'new-layout', change: `patched: ${(e as Error).message}` };
  }
  const n = Math.max(a.lines.length, b.lines.length);
  for (let i = 0; i < n; i++) {
    if (a.lines[i] !== b.lines[i]) {
      const was = a.lines[i] ?? '(none)';
      const now = b.lines[i] ?? '(none)';
      return { layout: 'new-layout', change: `${was} → ${now}`.slice(0, 512) };
    }
  }
  return { layout: 'same-layout' };
}
