//! The GPU fence on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program,
//! as raw eBPF instructions (no compiler, no libbpf). The kernel runs it
//! at every open or mknod of a device node by a process of the group it is
//! attached to (and of the groups below), with the device's type, number
//! and access; it returns 0 to refuse (EPERM) and 1 to let the other
//! programs and the v1 controller decide.
//!
//! The program denies the character devices listed and accepts everything
//! else, as Slurm's does: the group keeps an open device policy, so
//! `/dev/null`, `/dev/fuse`, `/dev/kvm` and the GPUs' control nodes keep
//! working. Its shape, for deny list `d`:
//!
//! ```text
//! r2 = ctx.access_type & 0xffff        (the device type)
//! r3 = ctx.major; r4 = ctx.minor
//! if r2 != CHAR goto accept
//! for each (M, m) in d:  if r3 == M && r4 == m: return 0
//! accept: return 1
//! ```
//!
//! Straight-line code with forward jumps only, so the verifier's cost is
//! linear in the list (4 instructions per GPU).

use crate::fence::DevNum;

/// The name the program is loaded under, by which a pass finds its own
/// attachments among the others of a group (the kernel keeps 15 bytes).
pub const PROG_NAME: &str = "kloigos_gpu";

/// `bpf_cgroup_dev_ctx.access_type`'s low half for a character device.
pub const DEV_CHAR: i32 = 2;
/// ... and for a block device.
pub const DEV_BLOCK: i32 = 1;
/// The access bits in its high half: mknod, read, write.
pub const ACC_MKNOD: u32 = 1;
/// Read.
pub const ACC_READ: u32 = 2;
/// Write.
pub const ACC_WRITE: u32 = 4;

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset (memory access, or jump distance in instructions).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The 8 bytes the kernel reads, in the host's byte order (the two
    /// registers share a byte as C bitfields: dst first).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = regs(self.dst, self.src);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }

    /// The instruction [`Insn::to_bytes`] wrote.
    pub fn from_bytes(b: [u8; 8]) -> Insn {
        let (dst, src) = unregs(b[1]);
        Insn {
            code: b[0],
            dst,
            src,
            off: i16::from_ne_bytes([b[2], b[3]]),
            imm: i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

#[cfg(target_endian = "little")]
fn regs(dst: u8, src: u8) -> u8 {
    (src << 4) | (dst & 0x0f)
}

#[cfg(target_endian = "little")]
fn unregs(b: u8) -> (u8, u8) {
    (b & 0x0f, b >> 4)
}

#[cfg(target_endian = "big")]
fn regs(dst: u8, src: u8) -> u8 {
    (dst << 4) | (src & 0x0f)
}

#[cfg(target_endian = "big")]
fn unregs(b: u8) -> (u8, u8) {
    (b >> 4, b & 0x0f)
}

/// Why a deny list cannot become a program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// A device number the instruction set cannot compare exactly (a
    /// major or minor past 2^31, which the kernel never makes).
    #[error("device number {major}:{minor} is out of range for the device program")]
    OutOfRange {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// More GPUs than one program's jumps can span.
    #[error("{0} device numbers to deny: more than one device program holds (at most {MAX_DENY})")]
    TooMany(usize),
}

/// The most device numbers one program denies (its jump over them must fit
/// in 16 bits; far beyond any node's GPU count).
pub const MAX_DENY: usize = 4096;

/// The program that refuses every access to the character devices `deny`
/// and accepts everything else. `deny` is taken as given (the fence plan
/// sorts and dedups it).
pub fn device_program(deny: &[DevNum]) -> Result<Vec<Insn>, ProgramError> {
    if deny.len() > MAX_DENY {
        return Err(ProgramError::TooMany(deny.len()));
    }
    let mut p = vec![
        Insn::new(LDX_MEM_W, 2, 1, 0, 0),
        Insn::new(ALU64_AND_K, 2, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, 3, 1, 4, 0),
        Insn::new(LDX_MEM_W, 4, 1, 8, 0),
        // To "accept", past the 4 instructions of each number.
        Insn::new(JMP_JNE_K, 2, 0, (4 * deny.len()) as i16, DEV_CHAR),
    ];
    for d in deny {
        let (Ok(major), Ok(minor)) = (i32::try_from(d.major), i32::try_from(d.minor)) else {
            return Err(ProgramError::OutOfRange {
                major: d.major,
                minor: d.minor,
            });
        };
        p.extend([
            Insn::new(JMP_JNE_K, 3, 0, 3, major),
            Insn::new(JMP_JNE_K, 4, 0, 2, minor),
            Insn::new(ALU64_MOV_K, 0, 0, 0, 0),
            Insn::new(JMP_EXIT, 0, 0, 0, 0),
        ]);
    }
    p.extend([
        Insn::new(ALU64_MOV_K, 0, 0, 0, 1),
        Insn::new(JMP_EXIT, 0, 0, 0, 0),
    ]);
    Ok(p)
}

/// The program as the bytes `BPF_PROG_LOAD` takes.
pub fn encode(prog: &[Insn]) -> Vec<u8> {
    prog.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the decoded program on a context the way the kernel would, for
    /// the opcodes [`device_program`] emits (anything else fails the test).
    fn run(bytes: &[u8], access_type: u32, major: u32, minor: u32) -> u64 {
        let prog: Vec<Insn> = bytes
            .chunks_exact(8)
            .map(|c| Insn::from_bytes(c.try_into().unwrap()))
            .collect();
        let ctx = [access_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..100_000 {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(i.src, 1, "loads only from the context");
                    r[i.dst as usize] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU64_AND_K => r[i.dst as usize] &= i.imm as i64 as u64,
                ALU64_MOV_K => r[i.dst as usize] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[i.dst as usize] != i.imm as i64 as u64 {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("the program does not end");
    }

    fn dev(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    #[test]
    fn the_program_denies_exactly_the_listed_character_devices() {
        let deny = [dev(195, 1), dev(195, 3), dev(226, 129)];
        let bytes = encode(&device_program(&deny).unwrap());
        assert_eq!(bytes.len(), 8 * (5 + 4 * 3 + 2));
        let rw = (ACC_READ | ACC_WRITE) << 16;
        let char_ = |m, n, acc: u32| run(&bytes, (acc << 16) | DEV_CHAR as u32, m, n);
        for d in deny {
            for acc in [ACC_READ, ACC_WRITE, ACC_MKNOD, ACC_READ | ACC_WRITE] {
                assert_eq!(char_(d.major, d.minor, acc), 0, "{d:?} {acc}");
            }
        }
        // The GPUs held, the control node, /dev/null, /dev/fuse, /dev/kvm:
        // accepted, as is a block device with a denied number.
        for (m, n) in [(195, 0), (195, 2), (195, 255), (1, 3), (10, 229), (10, 232)] {
            assert_eq!(char_(m, n, ACC_READ | ACC_WRITE), 1, "{m}:{n}");
        }
        assert_eq!(run(&bytes, rw | DEV_BLOCK as u32, 195, 1), 1);
        // Minor and major are both compared: no cross matches.
        assert_eq!(char_(195, 129, ACC_READ), 1);
        assert_eq!(char_(226, 1, ACC_READ), 1);
        // Nothing to deny: everything is accepted.
        let open = encode(&device_program(&[]).unwrap());
        assert_eq!(run(&open, (ACC_READ << 16) | DEV_CHAR as u32, 195, 1), 1);
    }

    #[test]
    fn instructions_round_trip_and_bad_lists_are_refused() {
        let i = Insn::new(JMP_JNE_K, 4, 0, -2, 0x1234_5678);
        assert_eq!(Insn::from_bytes(i.to_bytes()), i);
        let l = Insn::new(LDX_MEM_W, 3, 1, 4, 0);
        #[cfg(target_endian = "little")]
        assert_eq!(l.to_bytes()[1], 0x13);
        assert_eq!(
            device_program(&[dev(u32::MAX, 0)]),
            Err(ProgramError::OutOfRange {
                major: u32::MAX,
                minor: 0
            })
        );
        assert_eq!(
            device_program(&vec![dev(195, 0); MAX_DENY + 1]),
            Err(ProgramError::TooMany(MAX_DENY + 1))
        );
        // The longest list still jumps within range.
        let p = device_program(&vec![dev(195, 0); MAX_DENY]).unwrap();
        assert_eq!(p[4].off as usize, 4 * MAX_DENY);
    }
}
