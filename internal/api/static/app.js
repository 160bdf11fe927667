// The live page is being built.
