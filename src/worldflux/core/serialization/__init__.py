"""The bytes of a `State`: the binary codec (`codec`, its header and write plans, payload checks,
checksums), packed States whose tensors share one buffer (`packing`), and shared memory
(`shm`, the front door; `segment*`: names, layout, attach, pools). `worldflux.core.state.State`
is the public face of all of it (``serialize``, ``deserialize``, ``to_shared_memory``...)."""
