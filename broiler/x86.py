"""x86 architecture constants: control-register, EFER, RFLAGS, page-table and segment bits, MSR numbers.

The one place they are spelled out (Intel SDM vol. 3A §2.5 control registers, §4.5 4-level paging,
§3.4.5 segment descriptors; AMD APM vol. 2 for EFER). Plain integers only and no imports of broiler,
so every layer can use it, ``broiler/kvm/`` included.
"""

from __future__ import annotations

# CR0 (SDM 3A §2.5)
CR0_PE = 1 << 0  # protected mode
CR0_MP = 1 << 1  # monitor coprocessor
CR0_ET = 1 << 4  # extension type (always 1 on anything newer than a 386)
CR0_NE = 1 << 5  # native x87 error reporting
CR0_WP = 1 << 16  # supervisor writes honour read-only pages
CR0_AM = 1 << 18  # alignment checks allowed (with RFLAGS.AC, at CPL3)
CR0_PG = 1 << 31  # paging

# CR4 (SDM 3A §2.5)
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9  # the OS saves SSE state with FXSAVE: SSE instructions allowed
CR4_OSXMMEXCPT = 1 << 10  # the OS handles #XM
CR4_LA57 = 1 << 12  # 5-level paging

# IA32_EFER (MSR 0xC0000080)
EFER_SCE = 1 << 0  # syscall/sysret enabled
EFER_LME = 1 << 8  # long mode enabled
EFER_LMA = 1 << 10  # long mode active

# RFLAGS
RFLAGS_FIXED = 1 << 1  # bit 1 always reads as 1
RFLAGS_RF = 1 << 16  # resume flag
RFLAGS_RESET = RFLAGS_FIXED  # interrupts off, nothing else: how every loader enters a guest

# Page-table entries (SDM 3A §4.5), 4 KiB pages
PAGE_SIZE = 0x1000
PTE_P = 1 << 0  # present
PTE_RW = 1 << 1  # writable
PTE_US = 1 << 2  # user-accessible
PTE_PS = 1 << 7  # in a PDPTE or PDE: maps a 1 GiB or 2 MiB page
PTE_ADDR = 0x000F_FFFF_FFFF_F000  # the physical address bits of an entry

# Segment descriptor types (the S = 1 code/data ones and the system TSS; SDM 3A §3.4.5.1, §3.5)
SEG_DATA_RW = 0x3  # read/write, accessed
SEG_CODE_XR = 0xB  # execute/read, accessed
SEG_TSS_BUSY = 0xB  # with S = 0: a busy 32/64-bit TSS

# MSRs
MSR_EFER = 0xC000_0080
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_SFMASK = 0xC000_0084
