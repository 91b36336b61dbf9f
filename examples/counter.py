class Counter:  # a PIO counter: a read returns the count and adds one; a write sets it
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def read(self, offset: int, size: int) -> int:
        self.count += 1
        return (self.count - 1) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.count = value
