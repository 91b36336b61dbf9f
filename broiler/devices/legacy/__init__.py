"""PC devices a guest expects: UART, i8042, CMOS/RTC, ACPI PM, shutdown ports."""
