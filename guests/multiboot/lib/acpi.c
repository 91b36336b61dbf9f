/* ACPI table lookup for the Multiboot kernels. See acpi.h. */
#include "acpi.h"

int acpi_sig_is(const void *p, const char *sig, int n)
{
    const u8 *a = p;
    for (int i = 0; i < n; i++)
        if (a[i] != (u8)sig[i]) return 0;
    return 1;
}

u8 acpi_byte_sum(const void *p, u32 n)
{
    const u8 *a = p;
    u8 s = 0;
    while (n--) s = (u8)(s + *a++);
    return s;
}

int acpi_table_ok(u64 table, const char *sig)
{
    return table && acpi_sig_is((void *)table, sig, 4) && acpi_byte_sum((void *)table, acpi_u32(table + 4)) == 0;
}

u64 acpi_find_rsdp(void)
{
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (acpi_sig_is((void *)a, "RSD PTR ", 8) && acpi_byte_sum((void *)a, 20) == 0)
            return a;
    return 0;
}

u64 acpi_find_table(u64 rsdt, const char *sig)
{
    for (u64 e = rsdt + 36; e + 4 <= rsdt + acpi_u32(rsdt + 4); e += 4)
        if (acpi_sig_is((void *)(u64)acpi_u32(e), sig, 4))
            return acpi_u32(e);
    return 0;
}
