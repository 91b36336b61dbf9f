/* Finding the ACPI tables a Multiboot kernel checks (ACPI 6.5 §5.2.5 RSDP, §5.2.7 RSDT, §5.2.6 the
 * common header): both VMMs put the RSDP in the BIOS area and point to 32-bit tables from it.
 *
 *   u64 rsdp = acpi_find_rsdp();                     0 if absent
 *   u64 fadt = acpi_find_table(acpi_u32(rsdp + 16), "FACP");
 *   acpi_table_ok(fadt, "FACP")                      signature and checksum over the table's length
 *
 * A kernel asks for it with multiboot/lib/acpi.c on its "build-with:" line. */
#ifndef BROILER_ACPI_H
#define BROILER_ACPI_H

#include "mb.h"

static inline u32 acpi_u32(u64 addr) { return *(const u32 *)addr; }
int acpi_sig_is(const void *p, const char *sig, int n);
u8 acpi_byte_sum(const void *p, u32 n);          /* 0 over a whole table whose checksum is right */
int acpi_table_ok(u64 table, const char *sig);   /* nonzero table, 4-byte signature, checksum over its length */
u64 acpi_find_rsdp(void);                        /* 16-byte aligned in 0xE0000-0xFFFFF, ACPI 1.0 checksum */
/* The first table the RSDT lists with this signature, its checksum not checked (the kernel reports that
 * itself); 0 if none. */
u64 acpi_find_table(u64 rsdt, const char *sig);

#endif
