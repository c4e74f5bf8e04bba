/* The sub-millisecond child of bench/workload.c: exits at once. Built static (bench/setup.sh)
 * so that its exec costs no dynamic loader; it lives well under a millisecond. */
int main(void)
{
    return 0;
}
