/* A shared object with one function, loaded into the test process to resolve its address. */
int shared_function(int x) { return 3 * x + 1; }
