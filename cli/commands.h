// The subcommands of the `minitron` binary: one file each in cli/, each thin (parse flags,
// call the library, print). argv[0] is the subcommand's own name.
#pragma once

namespace minitron::cli {

int info(int argc, char** argv);
int train(int argc, char** argv);
int sft(int argc, char** argv);
int eval(int argc, char** argv);
int generate(int argc, char** argv);
int tokenizer(int argc, char** argv);
int tokenize(int argc, char** argv);
int importance(int argc, char** argv);
int prune(int argc, char** argv);
int correct(int argc, char** argv);
int distill(int argc, char** argv);
int pipeline(int argc, char** argv);
int plan(int argc, char** argv);

}  // namespace minitron::cli
