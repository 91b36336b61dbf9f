/* Multiboot test kernel: reads what the loader handed over (Multiboot information, command line,
 * modules, memory map), queries fw_cfg and drives every pc-testdev register, printing to COM1.
 *
 * Output: one line per fact ("mb: ...", "mod0: KEY=VAL", "mmap: ...", "fw_cfg: ...") and one line
 * per check ("ok N what" / "FAIL N what: got G want W"). mb_main returns 0 when every check passed,
 * else the number of the first failing check; boot.S writes it to isa-debug-exit (status 2v+1).
 *
 * Command-line words (after the kernel name, which QEMU and broiler put first):
 *   expect_cpus=N   fw_cfg CPU count must be N      expect_ram=N  fw_cfg RAM size (bytes, or NM) is N
 *   mods=N          exactly N modules                irqs=N        drive IRQ lines 0..N-1 (default 16:
 *                                                                   QEMU aborts on lines 16-23)
 *   shutdown8900    write "Shutdown" to port 0x8900 first (broiler exits 0 there; QEMU ignores it)
 *   probe           print what unaligned and unusual accesses do (no checks)
 *
 * Kept small on purpose: every CPL0 instruction is emulated (~1 us) on this host's KVM. */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1            0x3f8
#define LSR_THRE        0x20
#define FW_CFG_SEL      0x510
#define FW_CFG_DATA     0x511
#define TD_LATCH        0xe0
#define TD_FLUSH        0xe4
#define TD_LATCH_BYTE   0xe8
#define TD_IRQ          0x2000
#define TD_IOMEM        0xff000000UL
#define TD_IOMEM_SIZE   0x10000
#define MB_BOOT_MAGIC   0x2BADB002

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4], mmap_length, mmap_addr, drives_length, drives_addr, config_table;
    u32 boot_loader_name, apm_table;
};
struct mb_module { u32 start, end, string, reserved; };
struct mb_mmap { u32 size; u64 addr, len; u32 type; } __attribute__((packed));

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }

/* ---- output ---------------------------------------------------------------------------------- */
static void putc(char c)
{
    while (!(inb(COM1 + 5) & LSR_THRE))
        ;
    outb(COM1, (u8)c);
}
static void puts(const char *s) { while (*s) putc(*s++); }
static void put_hex(u64 v)
{
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do { buf[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts(buf + i);
}
static void put_dec(u64 v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(buf + i);
}
static void put_kv(const char *prefix, const char *key, u64 v, int hex)
{
    puts(prefix); puts(key); putc('=');
    if (hex) put_hex(v); else put_dec(v);
    putc('\n');
}

/* ---- checks ---------------------------------------------------------------------------------- */
static int first_failure;
static int check_no;

static void check(int ok, const char *what, u64 got, u64 want)
{
    ++check_no;
    if (ok) {
        puts("ok "); put_dec(check_no); putc(' '); puts(what); putc('\n');
        return;
    }
    puts("FAIL "); put_dec(check_no); putc(' '); puts(what);
    puts(": got "); put_hex(got); puts(" want "); put_hex(want); putc('\n');
    if (!first_failure)
        first_failure = check_no;
}
#define CHECK_EQ(what, got, want) do { u64 g_ = (got), w_ = (want); check(g_ == w_, what, g_, w_); } while (0)

/* ---- command line ---------------------------------------------------------------------------- */
static const char *cmdline = "";

static int word_eq(const char *w, const char *name)   /* w is a word ending at ' ', '=' or NUL */
{
    while (*name && *w == *name) { w++; name++; }
    return !*name && (*w == 0 || *w == ' ' || *w == '=');
}
/* The value of "name=..." among the words after the first (the kernel name), or 0. */
static const char *arg(const char *name)
{
    const char *p = cmdline;
    while (*p && *p != ' ') p++;                        /* skip argv[0] */
    while (*p) {
        while (*p == ' ') p++;
        if (word_eq(p, name)) {
            while (*p && *p != ' ' && *p != '=') p++;
            return *p == '=' ? p + 1 : p;
        }
        while (*p && *p != ' ') p++;
    }
    return 0;
}
static u64 parse_num(const char *s)
{
    u64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    if (*s == 'M') v <<= 20;
    if (*s == 'G') v <<= 30;
    return v;
}
static u64 arg_num(const char *name, u64 dflt)
{
    const char *v = arg(name);
    return v ? parse_num(v) : dflt;
}

/* ---- Multiboot information --------------------------------------------------------------------- */
static void print_line(const char *prefix, const char *s, const char *end)
{
    puts(prefix);
    while (s < end && *s != '\n') putc(*s++);
    putc('\n');
}

static void test_modules(const struct mb_info *mbi)
{
    const struct mb_module *mods = (const struct mb_module *)(u64)mbi->mods_addr;
    u64 want = arg_num("mods", ~0UL);
    if (want != ~0UL)
        CHECK_EQ("mods_count", mbi->mods_count, want);
    for (u32 i = 0; i < mbi->mods_count; i++) {
        const char *s = (const char *)(u64)mods[i].start, *end = (const char *)(u64)mods[i].end;
        int pairs = 0, bad = 0;
        put_kv("mb: mod", "_start", mods[i].start, 1);
        put_kv("mb: mod", "_size", mods[i].end - mods[i].start, 0);
        puts("mb: mod_string="); puts((const char *)(u64)mods[i].string); putc('\n');
        check((mods[i].start & 0xfff) == 0, "module page-aligned", mods[i].start, 0);
        while (s < end) {                               /* KEY=VAL lines; blank and # lines skipped */
            const char *line = s, *eq = 0;
            while (s < end && *s != '\n') { if (*s == '=' && !eq) eq = s; s++; }
            if (s > line && *line != '#') {
                if (eq && eq > line) { pairs++; print_line("mod: ", line, end); }
                else bad++;
            }
            s++;
        }
        check(pairs > 0 && !bad, "module holds KEY=VAL lines", (u64)bad, 0);
    }
}

/* Walks the map, prints it, and returns the end of the RAM entry that contains 1 MiB. */
static u64 test_mmap(const struct mb_info *mbi)
{
    u64 p = mbi->mmap_addr, end = p + mbi->mmap_length, upper_end = 0;
    int n = 0, sizes_ok = 1, has_low = 0;
    while (p < end) {
        const struct mb_mmap *e = (const struct mb_mmap *)p;
        puts("mmap: "); put_hex(e->addr); putc(' '); put_hex(e->len); putc(' '); put_dec(e->type);
        putc('\n');
        sizes_ok &= e->size == 20;
        if (e->type == 1 && e->addr == 0) has_low = 1;
        if (e->type == 1 && e->addr <= 0x100000 && 0x100000 < e->addr + e->len)
            upper_end = e->addr + e->len;
        p += e->size + 4;
        n++;
    }
    check(sizes_ok && n > 0, "mmap entries have size 20", (u64)n, (u64)n);
    CHECK_EQ("mmap walk ends at mmap_length", p, end);
    check(has_low, "mmap has RAM at 0", 0, 1);
    return upper_end;
}

static void test_multiboot(u32 magic, const struct mb_info *mbi)
{
    CHECK_EQ("EAX magic", magic, MB_BOOT_MAGIC);
    put_kv("mb: ", "flags", mbi->flags, 1);
    CHECK_EQ("flags has mem, cmdline, mods, mmap", mbi->flags & 0x4d, 0x4d);
    put_kv("mb: ", "mem_lower", mbi->mem_lower, 0);
    put_kv("mb: ", "mem_upper", mbi->mem_upper, 0);
    check(mbi->mem_lower >= 600 && mbi->mem_lower <= 640, "mem_lower in [600, 640] KiB",
          mbi->mem_lower, 639);
    if (mbi->cmdline)
        cmdline = (const char *)(u64)mbi->cmdline;
    puts("mb: cmdline="); puts(cmdline); putc('\n');
    check(mbi->cmdline != 0, "cmdline present", 0, 1);
    if (mbi->flags & (1 << 9)) {
        puts("mb: loader="); puts((const char *)(u64)mbi->boot_loader_name); putc('\n');
    }
    test_modules(mbi);
    u64 upper_end = test_mmap(mbi);
    CHECK_EQ("mem_upper = RAM contiguous from 1 MiB", ((u64)mbi->mem_upper << 10) + 0x100000, upper_end);
}

/* ---- fw_cfg -------------------------------------------------------------------------------------- */
static u64 fw_cfg_read(u16 key, int n)   /* n bytes of item key, little-endian */
{
    u64 v = 0;
    outw(FW_CFG_SEL, key);
    for (int i = 0; i < n; i++)
        v |= (u64)inb(FW_CFG_DATA) << (8 * i);
    return v;
}

static void test_fw_cfg(void)
{
    u64 sig = fw_cfg_read(0x00, 4), id = fw_cfg_read(0x01, 4);
    u64 cpus = fw_cfg_read(0x05, 2), ram = fw_cfg_read(0x03, 8), max_cpus = fw_cfg_read(0x0f, 2);
    put_kv("fw_cfg: ", "cpus", cpus, 0);
    put_kv("fw_cfg: ", "max_cpus", max_cpus, 0);
    put_kv("fw_cfg: ", "ram", ram, 0);
    CHECK_EQ("fw_cfg signature QEMU", sig, 0x554d4551);
    CHECK_EQ("fw_cfg ID has the port interface", id & 1, 1);
    check(cpus >= 1 && cpus <= max_cpus, "fw_cfg 1 <= cpus <= max_cpus", cpus, max_cpus);
    CHECK_EQ("fw_cfg cpus", cpus, arg_num("expect_cpus", cpus));
    CHECK_EQ("fw_cfg ram", ram, arg_num("expect_ram", ram));
    /* Past the end of an item, and for an item that does not exist, data reads give 0. */
    outw(FW_CFG_SEL, 0x00);
    for (int i = 0; i < 4; i++) inb(FW_CFG_DATA);
    CHECK_EQ("fw_cfg read past the end", inb(FW_CFG_DATA), 0);
    CHECK_EQ("fw_cfg unknown key", fw_cfg_read(0x3fff, 4), 0);
}

/* ---- pc-testdev ---------------------------------------------------------------------------------- */
static u8 flush_buf[4096] __attribute__((aligned(4096)));

__attribute__((weak)) void mb_irq_hook(int line, int level) { (void)line; (void)level; }

static void test_pc_testdev(void)
{
    outl(TD_LATCH, 0x12345678);
    CHECK_EQ("latch 32-bit", inl(TD_LATCH), 0x12345678);
    outb(TD_LATCH + 1, 0xaa);
    CHECK_EQ("latch byte write at +1", inl(TD_LATCH), 0x1234aa78);
    CHECK_EQ("latch byte read at +1", inb(TD_LATCH + 1), 0xaa);
    CHECK_EQ("latch byte read at +3", inb(TD_LATCH + 3), 0x12);
    outw(TD_LATCH + 2, 0xbeef);
    CHECK_EQ("latch word write at +2", inl(TD_LATCH), 0xbeefaa78);
    CHECK_EQ("latch word read at +0", inw(TD_LATCH), 0xaa78);
    CHECK_EQ("latch word read at +2", inw(TD_LATCH + 2), 0xbeef);
    CHECK_EQ("byte-wise view sees the latch", inl(TD_LATCH_BYTE), 0xbeefaa78);
    outl(TD_LATCH_BYTE, 0xcafef00d);
    CHECK_EQ("byte-wise 32-bit write", inl(TD_LATCH), 0xcafef00d);
    CHECK_EQ("byte-wise byte read at +2", inb(TD_LATCH_BYTE + 2), 0xfe);
    outw(TD_LATCH_BYTE + 2, 0x1122);
    CHECK_EQ("byte-wise word write at +2", inl(TD_LATCH), 0x1122f00d);
    CHECK_EQ("byte-wise word read at +0", inw(TD_LATCH_BYTE), 0xf00d);

    /* Flush: the page must keep its contents (QEMU mprotects it away and back). */
    volatile u64 *fp = (volatile u64 *)flush_buf;
    fp[0] = 0x1122334455667788UL;
    fp[511] = 0x8877665544332211UL;
    outl(TD_FLUSH, (u32)(u64)flush_buf);
    CHECK_EQ("flush keeps page contents", fp[0] ^ fp[511], 0x1122334455667788UL ^ 0x8877665544332211UL);
    fp[1] = 42;
    CHECK_EQ("flushed page still writable", fp[1], 42);

    u64 lines = arg_num("irqs", 16);
    for (u64 n = 0; n < lines; n++) {
        outb(TD_IRQ + n, 1);
        mb_irq_hook((int)n, 1);
        outb(TD_IRQ + n, 0);
        mb_irq_hook((int)n, 0);
    }
    put_kv("pc-testdev: ", "irq_lines_driven", lines, 0);

    /* The 64 KiB RAM-like MMIO window, every width, little-endian. */
    volatile u8 *w = (volatile u8 *)TD_IOMEM;
    *(volatile u64 *)(w + 0x10) = 0x0123456789abcdefUL;
    CHECK_EQ("iomem 64-bit", *(volatile u64 *)(w + 0x10), 0x0123456789abcdefUL);
    CHECK_EQ("iomem 8-bit read", w[0x10], 0xef);
    CHECK_EQ("iomem 16-bit read", *(volatile u16 *)(w + 0x12), 0x89ab);
    CHECK_EQ("iomem 32-bit read", *(volatile u32 *)(w + 0x14), 0x01234567);
    w[0x11] = 0x5a;
    *(volatile u16 *)(w + 0x16) = 0xc0de;
    *(volatile u32 *)(w + 0x18) = 0xfeedface;
    CHECK_EQ("iomem mixed writes", *(volatile u64 *)(w + 0x10), 0xc0de456789ab5aefUL);
    CHECK_EQ("iomem 32-bit write", *(volatile u32 *)(w + 0x18), 0xfeedface);
    *(volatile u64 *)(w + TD_IOMEM_SIZE - 8) = 0xa5a5a5a55a5a5a5aUL;
    CHECK_EQ("iomem last 8 bytes", *(volatile u64 *)(w + TD_IOMEM_SIZE - 8), 0xa5a5a5a55a5a5a5aUL);
    CHECK_EQ("iomem untouched byte is 0", w[0x100], 0);
}

/* Implementation-defined corners, printed for comparing VMMs; never checked. */
static void probe(void)
{
    volatile u8 *w = (volatile u8 *)TD_IOMEM;
    outl(TD_LATCH, 0x11223344);
    outw(TD_LATCH + 1, 0xabcd);
    put_kv("probe: ", "latch_after_unaligned_word_write", inl(TD_LATCH), 1);
    put_kv("probe: ", "latch_unaligned_word_read", inw(TD_LATCH + 1), 1);
    put_kv("probe: ", "irq_port_read", inb(TD_IRQ), 1);
    put_kv("probe: ", "flush_port_read", inl(TD_FLUSH), 1);
    *(volatile u32 *)(w + 0x20) = 0x11223344;
    *(volatile u16 *)(w + 0x21) = 0xabcd;
    put_kv("probe: ", "iomem_after_unaligned_word_write", *(volatile u32 *)(w + 0x20), 1);
    put_kv("probe: ", "iomem_unaligned_word_read", *(volatile u16 *)(w + 0x21), 1);
    put_kv("probe: ", "fw_cfg_word_read", (outw(FW_CFG_SEL, 0), inw(FW_CFG_DATA)), 1);
    put_kv("probe: ", "fw_cfg_read_at_selector_port", (outw(FW_CFG_SEL, 0), inb(FW_CFG_SEL)), 1);
    put_kv("probe: ", "fw_cfg_word_read_at_selector_port", (outw(FW_CFG_SEL, 0), inw(FW_CFG_SEL)), 1);
    put_kv("probe: ", "fw_cfg_byte_after_word_read", inb(FW_CFG_DATA), 1);
    put_kv("probe: ", "port_8900_read", inb(0x8900), 1);
}

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    puts("mbtest: start\n");
    if (magic == MB_BOOT_MAGIC && mbi->cmdline)
        cmdline = (const char *)(u64)mbi->cmdline;
    if (arg("shutdown8900")) {
        for (const char *s = "Shutdown"; *s; s++)
            outb(0x8900, (u8)*s);
        puts("mbtest: still running after Shutdown on port 0x8900\n");
    }
    if (magic != MB_BOOT_MAGIC) {
        CHECK_EQ("EAX magic", magic, MB_BOOT_MAGIC);
        return (u32)first_failure;
    }
    test_multiboot(magic, mbi);
    test_fw_cfg();
    test_pc_testdev();
    if (arg("probe"))
        probe();
    puts(first_failure ? "mbtest: FAILED\n" : "mbtest: PASSED\n");
    return (u32)first_failure;
}
