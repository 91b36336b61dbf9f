/* Multiboot test kernel: the instructions this host's KVM emulator cannot run (issue 17), each executed
 * at CPL0 and checked for its architectural effect, or for the exception the SDM gives it with this
 * vCPU's CPUID (an IDT handler records vector, error code, RIP and CR2, and resumes after a fault).
 *
 * Output: "insn: cpuid ..." (what the checks depend on), then "ok N what" per check. The first failing
 * check prints "FAIL N what: got G want W" and ends the run at once (isa-debug-exit value N); an
 * exception nobody expected ends it with 0x7f. All passed: "insn_test: PASSED", debug-exit 0 (status 1).
 *
 * Command-line word only=NAME runs one group (int3, intn, clac, xgetbv, clwb, invpcid, rdpru, movbe,
 * invalid): that is how tests/kvm/test_emulate_guest.py finds which instruction QEMU stops on.
 *
 * build-with: lib/lib.c multiboot/lib/mb.c */

#include "mb.h"

#define UNMAPPED 0x100000000UL  /* boot.S maps [0, 4 GiB): the next byte has no page */
#define V_BP 3
#define V_UD 6
#define V_NP 11
#define V_GP 13
#define V_PF 14
#define NONE 0xffUL


static int check_no;
static void check(int ok, const char *what, u64 got, u64 want)
{
    ++check_no;
    puts(ok ? "ok " : "FAIL "); put_dec((u64)check_no); putc(' '); puts(what);
    if (!ok) { puts(": got "); put_hex(got); puts(" want "); put_hex(want); }
    putc('\n');
    if (!ok) exit((u32)check_no);      /* a failed check ends the run at once */
}
#undef CHECK_EQ /* the toolkit's takes no name; this one prints "ok N what" too */
#define CHECK_EQ(what, got, want) do { u64 g_ = (got), w_ = (want); check(g_ == w_, what, g_, w_); } while (0)

/* ---- exceptions -------------------------------------------------------------------------------- */
static volatile u64 seen_vector, seen_error, seen_rip, seen_cr2, seen_count;
static u64 fault_resume;             /* where a fault resumes: just after the faulting instruction */

/* The instruction, with label 1 on it (its address goes to operand 0) and fault_resume set to the end. */
#define AT_INSN(insn) "lea 2f(%%rip), %0\n\tmov %0, fault_resume(%%rip)\n\tlea 1f(%%rip), %0\n1:\t" insn "\n2:"

void isr_dispatch(struct irq_frame *f)
{
    seen_vector = f->vector; seen_error = f->error; seen_rip = f->rip; seen_count++;
    if (f->vector == V_PF) { u64 cr2; __asm__ volatile("mov %%cr2, %0" : "=r"(cr2)); seen_cr2 = cr2; }
    if (f->vector == V_UD || f->vector == V_NP || f->vector == V_GP || f->vector == V_PF) {
        if (!fault_resume) { puts("unexpected fault "); put_hex(f->vector); puts(" at "); put_hex(f->rip);
                          putc('\n'); exit(0x7f); }
        f->rip = fault_resume;
        fault_resume = 0;
    } else if (f->vector < 32 && f->vector != V_BP) {
        puts("unexpected exception "); put_hex(f->vector); putc('\n'); exit(0x7f);
    }
}
void ap_main(u32 index) { (void)index; }

struct idt_entry { u16 off_lo, sel; u8 ist, type; u16 off_mid; u32 off_hi, zero; } __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));
extern char isr_stubs[];
static void insn_idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        u64 a = (u64)isr_stubs + (u64)v * 16;
        idt[v] = (struct idt_entry){ (u16)a, 0x08, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0 };
    }
    idt[0x81].type = 0x0e;           /* not present: int $0x81 raises #NP */
    idt[0x82].type = 0x8c;           /* a call gate, which an IDT may not hold: #GP */
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" :: "m"(idtr));
}
static void expect(void) { seen_count = 0; seen_vector = NONE; seen_error = NONE; seen_cr2 = 0; fault_resume = 0; }

static void cpuid(u32 leaf, u32 sub, u32 r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static int has(u32 leaf, u32 reg, u32 bit) { u32 r[4]; cpuid(leaf, 0, r); return (int)(r[reg] >> bit & 1); }
enum { EAX, EBX, ECX, EDX };

/* A fault: exactly one, the right vector and error code, RIP on the instruction. */
static void check_fault(const char *what, u64 vector, u64 error, u64 at)
{
    CHECK_EQ(what, seen_vector, vector);
    CHECK_EQ("  ... error code", seen_error, error);
    CHECK_EQ("  ... reported at the instruction", seen_rip, at);
    CHECK_EQ("  ... once", seen_count, 1);
}

/* ---- the instructions -------------------------------------------------------------------------- */
static void test_int3(void)
{
    u64 after;
    expect();
    __asm__ volatile("int3\n1: lea 1b(%%rip), %0" : "=r"(after));
    CHECK_EQ("int3: #BP", seen_vector, V_BP);
    CHECK_EQ("int3: frame RIP after it", seen_rip, after);
}

static void test_intn(void)
{
    u64 after, at, rbx = 0x1234;
    expect();
    __asm__ volatile("int $0x80\n1: lea 1b(%%rip), %0" : "=r"(after), "+b"(rbx) :: "memory");
    CHECK_EQ("int $0x80: vector 0x80", seen_vector, 0x80);
    CHECK_EQ("int $0x80: frame RIP after it", seen_rip, after);
    CHECK_EQ("int $0x80: registers kept", rbx, 0x1234);
    expect();
    __asm__ volatile("int $3\n1: lea 1b(%%rip), %0" : "=r"(after));
    CHECK_EQ("int $3 (cd 03): #BP", seen_vector, V_BP);
    expect();
    __asm__ volatile(AT_INSN("int $0x81") : "=&r"(at));
    check_fault("int $0x81, gate not present: #NP", V_NP, 0x81 * 8 + 2, at);
    expect();
    __asm__ volatile(AT_INSN("int $0x82") : "=&r"(at));
    check_fault("int $0x82, a call gate: #GP", V_GP, 0x82 * 8 + 2, at);
}

static void test_clac(void)
{
    u64 flags;
    expect();
    __asm__ volatile("stac; pushfq; popq %0" : "=r"(flags));
    CHECK_EQ("stac: AC set", flags >> 18 & 1, 1);
    __asm__ volatile("clac; pushfq; popq %0" : "=r"(flags));
    CHECK_EQ("clac: AC clear", flags >> 18 & 1, 0);
    CHECK_EQ("clac/stac: no exception", seen_count, 0);
}

static void test_xgetbv(void)
{
    u64 at;
    u32 lo = 0, hi = 0;
    if (!has(1, ECX, 26)) {          /* no XSAVE: CR4.OSXSAVE cannot be set, so xgetbv is #UD */
        expect();
        __asm__ volatile(AT_INSN("xgetbv") : "=&r"(at), "+a"(lo), "+d"(hi) : "c"(0));
        check_fault("xgetbv without CR4.OSXSAVE: #UD", V_UD, 0, at);
        return;
    }
    u64 cr4;
    __asm__ volatile("mov %%cr4, %0; or $0x40000, %0; mov %0, %%cr4" : "=r"(cr4));
    expect();
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    CHECK_EQ("xgetbv 0: XCR0 has x87", lo & 1, 1);
    expect();
    __asm__ volatile(AT_INSN("xgetbv") : "=&r"(at), "+a"(lo), "+d"(hi) : "c"(2));
    check_fault("xgetbv 2: #GP(0)", V_GP, 0, at);
}

static volatile u64 line = 0x5a5a;

static void test_clwb(void)
{
    u64 at;
    int clwb = has(7, EBX, 24), clflushopt = has(7, EBX, 23);
    expect();
    __asm__ volatile(AT_INSN("clwb (%1)") : "=&r"(at) : "r"(&line) : "memory");
    if (clwb)
        CHECK_EQ("clwb: no exception, line intact", seen_count + line, 0x5a5a);
    else
        check_fault("clwb without CPUID: #UD", V_UD, 0, at);
    expect();
    __asm__ volatile(AT_INSN("clflushopt (%1)") : "=&r"(at) : "r"(&line) : "memory");
    if (clflushopt)
        CHECK_EQ("clflushopt: no exception, line intact", seen_count + line, 0x5a5a);
    else
        check_fault("clflushopt without CPUID: #UD", V_UD, 0, at);
    if (clwb) {
        expect();
        __asm__ volatile(AT_INSN("clwb (%1)") : "=&r"(at) : "r"(UNMAPPED) : "memory");
        check_fault("clwb on an unmapped page: #PF", V_PF, 0, at);
        CHECK_EQ("  ... CR2", seen_cr2, UNMAPPED);
    }
}

static void test_invpcid(void)
{
    struct { u64 pcid, addr; } __attribute__((aligned(16))) desc = { 0, 0x1000 };
    u64 at;
    int invpcid = has(7, EBX, 10);
    expect();
    __asm__ volatile(AT_INSN("invpcid (%1), %2") : "=&r"(at) : "r"(&desc), "r"(0UL) : "memory");
    if (!invpcid) {
        check_fault("invpcid without CPUID: #UD", V_UD, 0, at);
        return;
    }
    CHECK_EQ("invpcid type 0: no exception", seen_count, 0);
    for (u64 type = 1; type <= 3; type++) {
        expect();
        __asm__ volatile("invpcid (%0), %1" :: "r"(&desc), "r"(type) : "memory");
        CHECK_EQ("invpcid types 1-3: no exception", seen_count, 0);
    }
    expect();
    __asm__ volatile(AT_INSN("invpcid (%1), %2") : "=&r"(at) : "r"(&desc), "r"(4UL) : "memory");
    check_fault("invpcid type 4: #GP(0)", V_GP, 0, at);
    desc.pcid = 1;                   /* CR4.PCIDE is clear: only PCID 0 exists */
    expect();
    __asm__ volatile(AT_INSN("invpcid (%1), %2") : "=&r"(at) : "r"(&desc), "r"(0UL) : "memory");
    check_fault("invpcid PCID 1 without CR4.PCIDE: #GP(0)", V_GP, 0, at);
}

static void test_rdpru(void)
{
    u64 at;
    u32 lo = 0, hi = 0;
    expect();
    __asm__ volatile(AT_INSN("rdpru") : "=&r"(at), "+a"(lo), "+d"(hi) : "c"(0));
    if (!has(0x80000008, EBX, 4))
        check_fault("rdpru without CPUID: #UD", V_UD, 0, at);
    else
        CHECK_EQ("rdpru: no exception", seen_count, 0);
}

/* Only the illegal form: a movbe load is run by KVM's own emulator, which raises #UD when the vCPU's
 * KVM CPUID lacks MOVBE even where the guest's CPUID instruction shows it (this host: it does). */
static void test_movbe(void)
{
    u64 at;
    expect();
    __asm__ volatile(AT_INSN(".byte 0x0f, 0x38, 0xf0, 0xc0") : "=&r"(at) :: "rax");
    check_fault("movbe eax, eax (register operand): #UD", V_UD, 0, at);
}

static void test_invalid(void)
{
    u64 at;
    expect();
    __asm__ volatile(AT_INSN(".byte 0xf0, 0x90") : "=&r"(at));
    check_fault("lock nop: #UD", V_UD, 0, at);
    expect();
    __asm__ volatile(AT_INSN("ud2") : "=&r"(at));
    check_fault("ud2: #UD", V_UD, 0, at);
}

/* ---- main -------------------------------------------------------------------------------------- */
static const char *only;
static int word_is(const char *w, const char *name)
{
    while (*name && *w == *name) { w++; name++; }
    return !*name && (*w == 0 || *w == ' ');
}
static int wanted(const char *name) { return !only || word_is(only, name); }

u32 mb_main(u32 magic, const struct mb_info *mbi)
{
    static const struct { const char *name; void (*fn)(void); } groups[] = {
        { "int3", test_int3 }, { "intn", test_intn }, { "clac", test_clac }, { "xgetbv", test_xgetbv },
        { "clwb", test_clwb }, { "invpcid", test_invpcid }, { "rdpru", test_rdpru },
        { "movbe", test_movbe }, { "invalid", test_invalid },
    };
    CHECK_EQ("multiboot magic", magic, 0x2BADB002);
    const char *cmd = (mbi->flags & 4) ? (const char *)(u64)mbi->cmdline : "";
    for (const char *p = cmd; *p; p++)   /* the word "only=NAME" anywhere after the kernel name */
        if (p > cmd && p[-1] == ' ' && p[0] == 'o' && p[1] == 'n' && p[2] == 'l' && p[3] == 'y' && p[4] == '=')
            only = p + 5;
    insn_idt_init();
    u32 r[4];
    cpuid(1, 0, r); puts("insn: cpuid 1 ecx="); put_hex(r[2]);
    cpuid(7, 0, r); puts(" 7 ebx="); put_hex(r[1]);
    cpuid(0x80000008, 0, r); puts(" 80000008 ebx="); put_hex(r[1]); putc('\n');
    for (u64 i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
        if (wanted(groups[i].name)) {
            puts("insn: group "); puts(groups[i].name); putc('\n');
            groups[i].fn();
        }
    puts("insn_test: PASSED\n");
    return 0;
}
