/* The guest toolkit: port and MMIO access, serial output, exit, small checks. */
#ifndef BROILER_GUEST_H
#define BROILER_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

#define DEBUG_EXIT_PORT 0xf4
#define COM1 0x3f8

void putc(char c);
void puts(const char *s);          /* no newline added */
void put_hex(u64 v);               /* 0x-prefixed, no padding */
void put_dec(u64 v);
void printf(const char *fmt, ...); /* %s %c %d %u %x %lx %lu %ld %p %% only */
void exit(u32 value) __attribute__((noreturn));     /* status (value << 1) | 1 */
void poweroff(void) __attribute__((noreturn));      /* status 0: "Shutdown" to port 0x8900 */

/* Checks: a failing one prints its line and ends the guest at once (exit(1)): the steps after a
 * failed check may depend on it, and a test must see the failure, not a hang. */
extern int check_failures;
#define CHECK_EQ(got, want) check_eq((u64)(got), (u64)(want), #got, __LINE__)
void check_eq(u64 got, u64 want, const char *what, int line);  /* returns only if equal */

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* -- interrupts (lib/irq.c, lib/isr.S) -------------------------------------------------- */
struct irq_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler_t)(struct irq_frame *f);

void idt_init(void);                            /* all 256 vectors; unhandled ones exit(0x7f) */
void set_handler(u8 vector, irq_handler_t fn);
static inline void sti(void) { __asm__ volatile("sti"); }
static inline void cli(void) { __asm__ volatile("cli"); }
static inline void cpu_relax(void) { __asm__ volatile("pause"); }

#define PIC_VECTOR_BASE 0x20                    /* IRQ n -> vector 0x20 + n with pic_init(0x20, 0x28) */
void pic_init(u8 master_base, u8 slave_base);   /* everything masked except the cascade */
void pic_unmask(u8 irq);
void pic_mask(u8 irq);
void pic_eoi(u8 irq);

#define IOAPIC_VECTOR_BASE 0x40                 /* our convention: IOAPIC pin n -> vector 0x40 + n */
void lapic_init(void);
void lapic_eoi(void);
u32 lapic_id(void);
void ioapic_route(u8 pin, u8 vector, int level, u8 dest_apic);
void ioapic_mask(u8 pin);
/* Halt with interrupts on until *counter >= target; returns 0 if max_halts wake-ups pass first. */
int wait_for(volatile u32 *counter, u32 target, u64 max_halts);

/* -- PCI (lib/pci.c; docs/pci.md "Guest toolkit") ---------------------------------------- */
/* A function is named by its bdf: bus << 8 | device << 3 | function. */
#define PCI_BDF(bus, dev, fn) ((u16)((u32)(bus) << 8 | (u32)(dev) << 3 | (u32)(fn)))
#define PCI_BDF_BUS(bdf) ((u8)((bdf) >> 8))
#define PCI_BDF_DEV(bdf) ((u8)(((bdf) >> 3) & 0x1f))
#define PCI_BDF_FN(bdf) ((u8)((bdf) & 7))

#define PCI_CONF1_ADDR 0xcf8                    /* mechanism #1: address latch ... */
#define PCI_CONF1_DATA 0xcfc                    /* ... and the data window 0xcfc-0xcff */
#define PCI_CONF1_ENABLE 0x80000000u
#define PCI_ECAM_BASE 0xc1000000UL              /* bus << 20 | dev << 15 | fn << 12 | reg */
#define PCI_ECAM_BUSES 16

/* Type-0 header registers and bits. */
#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_CLASS_PROG 0x09                     /* 24-bit class code: base << 16 | sub << 8 | prog-if */
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_VENDOR 0x2c
#define PCI_ROM_ADDRESS 0x30
#define PCI_CAP_PTR 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d
#define PCI_CMD_IO 0x0001
#define PCI_CMD_MEM 0x0002
#define PCI_CMD_MASTER 0x0004
#define PCI_CMD_INTX_DISABLE 0x0400
#define PCI_STATUS_INTX 0x0008
#define PCI_STATUS_CAP_LIST 0x0010
#define PCI_CAP_ID_MSI 0x05
#define PCI_CAP_ID_MSIX 0x11

/* Configuration cycles. Sizes are 1, 2 or 4; the toolkit passes them on as given (no checks), so a
 * test can make odd accesses on purpose. ECAM reaches buses 0-15; other buses read all ones. */
enum { PCI_CONF1 = 0, PCI_ECAM = 1 };
extern int pci_mechanism;                       /* what pci_read/pci_write use; PCI_CONF1 at start */
u32 pci_conf1_read(u16 bdf, u16 reg, int size);
void pci_conf1_write(u16 bdf, u16 reg, int size, u32 value);
u32 pci_ecam_read(u16 bdf, u16 reg, int size);
void pci_ecam_write(u16 bdf, u16 reg, int size, u32 value);
u32 pci_read(u16 bdf, u16 reg, int size);
void pci_write(u16 bdf, u16 reg, int size, u32 value);
static inline u32 pci_read32(u16 bdf, u16 reg) { return pci_read(bdf, reg, 4); }
static inline u16 pci_read16(u16 bdf, u16 reg) { return (u16)pci_read(bdf, reg, 2); }
static inline u8 pci_read8(u16 bdf, u16 reg) { return (u8)pci_read(bdf, reg, 1); }
static inline void pci_write32(u16 bdf, u16 reg, u32 v) { pci_write(bdf, reg, 4, v); }
static inline void pci_write16(u16 bdf, u16 reg, u16 v) { pci_write(bdf, reg, 2, v); }
static inline void pci_write8(u16 bdf, u16 reg, u8 v) { pci_write(bdf, reg, 1, v); }

/* BARs. Sizing writes all ones with the function's decode turned off, reads the mask, restores the
 * BAR and COMMAND. pci_bar_set writes a BAR as it is (decode stays on: the device moves at once);
 * pci_bar_move turns decode off around the write, as Linux does. */
enum { PCI_BAR_NONE = 0, PCI_BAR_IO, PCI_BAR_MEM32, PCI_BAR_MEM64 };
struct pci_bar {
    u64 addr;                                   /* programmed address, type bits stripped */
    u64 size;                                   /* 0: not implemented */
    u8 kind;                                    /* PCI_BAR_* */
    u8 prefetch;
};
int pci_bar_probe(u16 bdf, int index, struct pci_bar *bar);   /* returns registers used: 1 or 2 */
u64 pci_bar_addr(u16 bdf, int index);           /* the programmed address of BAR index */
void pci_bar_set(u16 bdf, int index, u64 addr);
void pci_bar_move(u16 bdf, int index, u64 addr);
u16 pci_decode_off(u16 bdf);                    /* clear COMMAND IO|MEM; returns the old COMMAND */

/* Enumeration: every present function of a bus (functions 1-7 only behind a multi-function
 * header), with IDs, class, interrupt pin/line and sized BARs. Returns how many were found. */
struct pci_dev {
    u16 bdf;
    u16 vendor, device;
    u32 class_code;                             /* 24 bits */
    u8 revision, header_type, irq_pin, irq_line;
    struct pci_bar bar[6];
};
int pci_scan_bus(u8 bus, struct pci_dev *devs, int max);
const struct pci_dev *pci_find(const struct pci_dev *devs, int n, u16 vendor, u16 device);

/* Capabilities: offset of the first capability with this ID, 0 if none (loop-safe walk). */
u8 pci_find_cap(u16 bdf, u8 id);

/* MSI: address 0xfee00000 | dest << 12 (fixed delivery, physical), data = vector, one vector. */
#define MSI_ADDRESS(dest) (0xfee00000u | (u32)(dest) << 12)
u8 pci_msi_enable(u16 bdf, u8 dest_apic, u8 vector);         /* returns the cap offset, 0 if none */
void pci_msi_disable(u16 bdf);

/* MSI-X: the table and PBA live in memory BARs (located from the BARs when pci_msix_init runs:
 * call it again after moving that BAR). Entries are 16 bytes: address lo/hi, data, vector control. */
struct pci_msix {
    u16 bdf;
    u8 cap;
    u16 entries;
    u64 table, pba;                             /* guest-physical addresses */
};
int pci_msix_init(u16 bdf, struct pci_msix *m);               /* 0 if the function has no MSI-X */
void pci_msix_enable(struct pci_msix *m, int on);
void pci_msix_function_mask(struct pci_msix *m, int masked);
void pci_msix_set_entry(struct pci_msix *m, u16 entry, u8 dest_apic, u8 vector); /* mask untouched */
void pci_msix_mask(struct pci_msix *m, u16 entry, int masked);
u32 pci_msix_ctrl(struct pci_msix *m, u16 entry);             /* the entry's vector control */
int pci_msix_pending(struct pci_msix *m, u16 entry);          /* its PBA bit */
/* Enable with the function masked, program entry 0 .. n-1 unmasked to vector + i, then unmask. */
int pci_msix_setup(u16 bdf, struct pci_msix *m, u16 n, u8 dest_apic, u8 vector);

#endif
