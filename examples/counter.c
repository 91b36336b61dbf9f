#include "broiler.h" /* counter.py at port 0x700: write 40, read 40 41 42; exit 0 if right */
int main(void) {
    outl(0x700, 40);
    for (u32 want = 40; want < 43; want++) CHECK_EQ(inl(0x700), want);
    puts("counter: ok\n");
    return 0;
}
